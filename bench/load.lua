-- wrk script: POST JSON requests for random seeded customers and check every response.
--
-- Arguments (after `--`), all strings:
--   1 lookup path          e.g. /graphql
--   2 lookup template      body of a lookup
--   3 lookup expect        substrings a successful lookup response contains, joined by "&&"
--   4 top-up path
--   5 top-up template      body of a top-up
--   6 top-up expect        as 3, for a top-up
--   7 top-up share         0..1: the fraction of requests that are top-ups
--   8 customers            seeded customers are cus_0 .. cus_<customers-1>
--   9 organization ids     comma-separated, as 10 (only where a template needs $ORG)
--  10 API keys             comma-separated; customer k belongs to the organization of key k % count
--  11 key prefix           makes every top-up's idempotency key unique across runs
--
-- Templates may contain $CUSTOMER, $ORG and $KEY. A response is a success when its status is
-- 200, its body has no "errors" and it contains every expected substring of its kind; anything
-- else is counted as a failure, because a fast error is not a result.

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

local function split(text, separator)
  local parts = {}
  if text == "" then
    return parts
  end
  local start = 1
  while true do
    local at = string.find(text, separator, start, true)
    if not at then
      table.insert(parts, string.sub(text, start))
      return parts
    end
    table.insert(parts, string.sub(text, start, at - 1))
    start = at + #separator
  end
end

local lookup_path, lookup_body, lookup_expect, top_up_path, top_up_body, top_up_expect
local top_up_share, customers, organizations, api_keys, key_prefix
local counter = 0

function init(args)
  lookup_path = args[1]
  lookup_body = args[2]
  lookup_expect = split(args[3], "&&")
  top_up_path = args[4]
  top_up_body = args[5]
  top_up_expect = split(args[6], "&&")
  top_up_share = tonumber(args[7])
  customers = tonumber(args[8])
  organizations = split(args[9], ",")
  api_keys = split(args[10], ",")
  key_prefix = args[11] .. "-" .. tid
  math.randomseed(os.time() * 1000 + tid)
  successes = 0
  failures = 0
  first_failure = ""
end

local function fill(template, customer, organization, key)
  return (template:gsub("%$(%u+)", function(name)
    if name == "CUSTOMER" then
      return customer
    elseif name == "ORG" then
      return organization
    elseif name == "KEY" then
      return key
    end
  end))
end

function request()
  local k = math.random(0, customers - 1)
  local o = k % #api_keys + 1
  local path, template = lookup_path, lookup_body
  if top_up_share > 0 and math.random() < top_up_share then
    path, template = top_up_path, top_up_body
  end
  counter = counter + 1
  local body = fill(template, "cus_" .. k, organizations[o] or "", key_prefix .. "-" .. counter)
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. api_keys[o],
  }
  return wrk.format("POST", path, headers, body)
end

local function contains_all(body, expected)
  if #expected == 0 then
    return false
  end
  for _, part in ipairs(expected) do
    if not string.find(body, part, 1, true) then
      return false
    end
  end
  return true
end

function response(status, headers, body)
  local ok = status == 200
    and not string.find(body, '"errors"', 1, true)
    and (contains_all(body, lookup_expect) or contains_all(body, top_up_expect))
  if ok then
    successes = successes + 1
  else
    failures = failures + 1
    if first_failure == "" then
      first_failure = status .. " " .. string.sub(body, 1, 300)
    end
  end
end

local function json_string(text)
  return '"' .. text:gsub('[%c"\\]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end) .. '"'
end

function done(summary, latency, requests)
  local ok, failed, sample = 0, 0, ""
  for _, thread in ipairs(threads) do
    ok = ok + thread:get("successes")
    failed = failed + thread:get("failures")
    if sample == "" then
      sample = thread:get("first_failure")
    end
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"successes":%d,"failures":%d,'
      .. '"socket_errors":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,"first_failure":%s}\n',
    summary.requests, summary.duration, ok, failed,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, json_string(sample)
  ))
end
