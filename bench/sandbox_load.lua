-- wrk script: POST realistic inbound messages to the sandbox, like the importer does.
-- Requests cycle through 1,000 conversations per wrk thread with dates that only move forward, so
-- the sandbox's per-conversation ordering check does its real work. /__stats then reports
-- out_of_order 0 or nearly: wrk does not wait for a conversation's previous request, so one stalled
-- for a few milliseconds can be overtaken by the next message of its conversation (1,000 requests
-- later) - which is exactly what the counter is there to catch.
--
--   wrk -t2 -c64 -d15s -s bench/sandbox_load.lua http://127.0.0.1:8787
--
-- Token and version match `lc-import sandbox` defaults; override with SANDBOX_TOKEN.

local token = os.getenv("SANDBOX_TOKEN") or "sandbox-token"
local counter = 0
local thread_tag = 0

function setup(thread)
  thread_tag = thread_tag + 1
  thread:set("tag", thread_tag)
end

function init(args)
  wrk.method = "POST"
  wrk.path = "/conversations/messages/inbound"
  wrk.headers["Authorization"] = "Bearer " .. token
  wrk.headers["Version"] = "2021-07-28"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local conversation = string.format("conv%02d%014d", tag or 0, counter % 1000)
  -- One second later per request: within a conversation dates only go forward.
  local date = os.date("!%Y-%m-%dT%H:%M:%SZ", 1714557600 + counter)
  local body = string.format(
    '{"type":"SMS","conversationId":"%s","contactId":"q7Xk2LmN4pR8sT1vW3yZ",' ..
    '"message":"Hi, this is message %d imported from the old CRM. Thanks for your order!",' ..
    '"direction":"inbound","date":"%s",' ..
    '"altId":"legacy-%d"}',
    conversation, counter, date, counter)
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local non2xx = summary.errors.status
  io.write(string.format("requests: %d, non-2xx: %d, socket errors: connect %d read %d write %d timeout %d\n",
    summary.requests, non2xx, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout))
end
