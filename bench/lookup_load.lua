-- wrk script: the importer's lookups against a seeded sandbox, at random among N contacts.
-- Each request is, in turn, a contact search by e-mail (`/contacts/search/duplicate`) and a
-- conversation search by contact (`/conversations/search`), for a contact drawn at random from
-- the CONTACTS seeded by bench/lookup_load.sh (ids c000…, e-mails c…@example.com, one
-- conversation each).
--
--   CONTACTS=1000000 wrk -t2 -c32 -d10s -s bench/lookup_load.lua http://127.0.0.1:8787

local token = os.getenv("SANDBOX_TOKEN") or "sandbox-token"
local contacts = tonumber(os.getenv("CONTACTS") or "1000")
local location = "ve9EPM428h8vShlRW1KT"
local counter = 0

function init(args)
  wrk.headers["Authorization"] = "Bearer " .. token
  wrk.headers["Version"] = "2021-07-28"
  math.randomseed(os.time() + counter)
end

function request()
  counter = counter + 1
  local n = math.random(0, contacts - 1)
  if counter % 2 == 0 then
    return wrk.format("GET", string.format(
      "/contacts/search/duplicate?locationId=%s&email=c%d%%40example.com", location, n))
  end
  return wrk.format("GET", string.format(
    "/conversations/search?locationId=%s&contactId=c%019d", location, n))
end

local misses = 0

function response(status, headers, body)
  -- Every drawn contact exists: a search that finds nothing is a broken bench (or sandbox).
  if status ~= 200 or string.find(body, '"contact":null') or string.find(body, '"total":0') then
    misses = misses + 1
    if misses == 1 then
      print("unexpected answer " .. status .. ": " .. body)
    end
  end
end
