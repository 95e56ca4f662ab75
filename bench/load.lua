-- wrk script: POST JSON requests for random seeded customers and check every response.
--
-- Arguments (after `--`), all strings:
--   1 organization ids     comma-separated, as 2 (only where a template needs $ORG)
--   2 API keys             comma-separated; customer k belongs to the organization of key k % count
--   3 key prefix           makes every write's idempotency key unique across runs
--   then one group of 5 per operation of the mix (one group: every request is that operation):
--     path                 e.g. /graphql
--     template             the request body
--     expect               substrings a successful response contains, joined by "&&"
--     weight               > 0: the operation's share of requests is its weight over the sum
--     customers            the operation draws customer cus_k for k in 0 .. customers-1
--
-- Templates may contain $CUSTOMER, $ORG and $KEY (placeholders are upper case, so GraphQL's own
-- $variables are left alone). A response is a success when its status is 200, its body has no
-- "errors" and it contains every expected substring of one operation of the mix; anything else
-- is counted as a failure, because a fast error is not a result. (wrk does not tell which
-- request a response answers: in a mix, a response passes as any of its operations.)

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

local operations = {}
local total_weight = 0
local organizations, api_keys, key_prefix
local counter = 0

function init(args)
  organizations = split(args[1], ",")
  api_keys = split(args[2], ",")
  key_prefix = args[3] .. "-" .. tid
  local i = 4
  while args[i] do
    local operation = {
      path = args[i],
      body = args[i + 1],
      expect = split(args[i + 2], "&&"),
      weight = tonumber(args[i + 3]),
      customers = tonumber(args[i + 4]),
    }
    total_weight = total_weight + operation.weight
    operation.until_weight = total_weight
    table.insert(operations, operation)
    i = i + 5
  end
  assert(#operations > 0 and i == #args + 1, "operations come in groups of 5 arguments")
  math.randomseed(os.time() * 1000 + tid)
  successes = 0
  failures = 0
  first_failure = ""
end

local function pick()
  if #operations == 1 then
    return operations[1]
  end
  local at = math.random() * total_weight
  for _, operation in ipairs(operations) do
    if at < operation.until_weight then
      return operation
    end
  end
  return operations[#operations]
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
  local operation = pick()
  local k = math.random(0, operation.customers - 1)
  local o = k % #api_keys + 1
  counter = counter + 1
  local body = fill(operation.body, "cus_" .. k, organizations[o] or "", key_prefix .. "-" .. counter)
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. api_keys[o],
  }
  return wrk.format("POST", operation.path, headers, body)
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
  local ok = status == 200 and not string.find(body, '"errors"', 1, true)
  if ok then
    ok = false
    for _, operation in ipairs(operations) do
      if contains_all(body, operation.expect) then
        ok = true
        break
      end
    end
  end
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
