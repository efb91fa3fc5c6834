-- The soak's mixed traffic (bench/soak.py):
--   wrk -s soak.lua URL -- <dir> <segment> <hmac GET pool> <hmac POST pool>
-- <dir> holds the key lists (one secret a line: valid.txt, unknown.txt, expired.txt, scope.txt,
-- disabled.txt, no_access.txt), malformed.txt, body.bin and digest.txt (its Content-Digest), and
-- mix.txt ("<kind> <weight>" lines). Each request is one kind, drawn from a weighted schedule
-- shuffled per thread. The kind travels in X-Request-Id ("s<segment>t<thread>-<kind>.<n>"),
-- which the gateway echoes on every answer (upstream's or its own), so response() can count
-- answers by kind, status and error code although wrk does not say which connection answered.
-- A pre-signed HMAC line is sent once; a thread that has spent its share sends a valid API-key
-- GET instead (counted as `exhausted`), never a replay. Optional SOAK_DELAY_MS paces each
-- connection (wrk's delay()). done() prints one line: SOAK_JSON {...}.

local counter = 0
local threads = {}
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  threads[#threads + 1] = thread
end

local function read_lines(path)
  local out = {}
  local handle = io.open(path, "r")
  if not handle then return out end
  for line in handle:lines() do
    if #line > 0 then out[#out + 1] = line end
  end
  handle:close()
  return out
end

local function read_all(path)
  local handle = assert(io.open(path, "rb"))
  local data = handle:read("*a")
  handle:close()
  return data
end

-- globals read back by done() through thread:get
counts, sent, exhausted = {}, {}, 0

local lists, cursors, pools, schedule = {}, {}, {}, {}
local pos, seq, prefix, get_path, post_body, digest, my_segment

local function thread_share(path, nthreads)
  local inputs, signatures, n = {}, {}, 0
  for _, line in ipairs(read_lines(path)) do
    if n % nthreads == tid then
      local tab = line:find("\t", 1, true)
      inputs[#inputs + 1] = line:sub(1, tab - 1)
      signatures[#signatures + 1] = line:sub(tab + 1)
    end
    n = n + 1
  end
  return {inputs = inputs, signatures = signatures}
end

function init(args)
  local dir = args[1]
  my_segment = tonumber(args[2])
  local nthreads = tonumber(os.getenv("BENCH_WRK_THREADS") or "1")
  for _, name in ipairs({"valid", "unknown", "expired", "scope", "disabled", "no_access",
                         "malformed"}) do
    lists[name] = read_lines(dir .. "/" .. name .. ".txt")
    -- threads and segments start at different places (the unknown keys then miss the
    -- negative cache, as made-up keys would)
    cursors[name] = (my_segment * 7919 + tid * 104729) % math.max(#lists[name], 1)
  end
  pools.hmac_get = thread_share(args[3], nthreads)
  pools.hmac_post = thread_share(args[4], nthreads)
  cursors.hmac_get, cursors.hmac_post = 0, 0
  post_body = read_all(dir .. "/body.bin")
  digest = read_lines(dir .. "/digest.txt")[1]
  for _, line in ipairs(read_lines(dir .. "/mix.txt")) do
    local kind, weight = line:match("^(%S+)%s+(%d+)$")
    for _ = 1, tonumber(weight) do schedule[#schedule + 1] = kind end
  end
  math.randomseed(my_segment * 1000 + tid + 1)
  for i = #schedule, 2, -1 do
    local j = math.random(i)
    schedule[i], schedule[j] = schedule[j], schedule[i]
  end
  pos, seq = 0, 0
  prefix = "s" .. my_segment .. "t" .. tid .. "-"
  get_path = wrk.path
end

local function next_of(name)
  local list = lists[name]
  local i = cursors[name] % #list + 1
  cursors[name] = i
  return list[i]
end

function request()
  pos = pos % #schedule + 1
  seq = seq + 1
  local kind = schedule[pos]
  local method, path, body = "GET", get_path, nil
  local headers = {}
  local pool = pools[kind]
  if pool then
    local i = cursors[kind] + 1
    if i > #pool.inputs then
      exhausted = exhausted + 1
      kind = "apikey"
    else
      cursors[kind] = i
      headers["Signature-Input"] = pool.inputs[i]
      headers["Signature"] = pool.signatures[i]
      if kind == "hmac_post" then
        method, body = "POST", post_body
        headers["Content-Digest"] = digest
        headers["Content-Type"] = "application/octet-stream"
      end
    end
  end
  if kind == "apikey" then
    headers["Authorization"] = "Api-Key " .. next_of("valid")
  elseif kind == "no_route" then
    path = "/nowhere/" .. seq
    headers["Authorization"] = "Api-Key " .. next_of("valid")
  elseif lists[kind] then
    headers["Authorization"] = "Api-Key " .. next_of(kind)
  end
  -- "missing": no credential at all; hmac_*: signed above
  headers["X-Request-Id"] = prefix .. kind .. "." .. seq
  sent[kind] = (sent[kind] or 0) + 1
  return wrk.format(method, path, headers, body)
end

function response(status, headers, body)
  local rid = headers["X-Request-Id"] or headers["x-request-id"]
  local kind = "unlabelled"
  if rid then
    local segment, thread, named = rid:match("^s(%d+)t(%d+)%-([%a_]+)%.%d+$")
    if named and tonumber(segment) == my_segment and tonumber(thread) == tid then
      kind = named
    else
      kind = "mislabelled"
    end
  end
  local code = "-"
  if status >= 400 then
    code = (body and body:match('"code"%s*:%s*"([%w_]+)"')) or "?"
  end
  local key = kind .. " " .. status .. " " .. code
  counts[key] = (counts[key] or 0) + 1
end

local delay_ms = tonumber(os.getenv("SOAK_DELAY_MS") or "0")
if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

local function json_object(tbl)
  local parts = {}
  for k, v in pairs(tbl) do
    parts[#parts + 1] = string.format('"%s":%d', k, v)
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local all_counts, all_sent, all_exhausted = {}, {}, 0
  for _, thread in ipairs(threads) do
    for k, v in pairs(thread:get("counts") or {}) do all_counts[k] = (all_counts[k] or 0) + v end
    for k, v in pairs(thread:get("sent") or {}) do all_sent[k] = (all_sent[k] or 0) + v end
    all_exhausted = all_exhausted + (thread:get("exhausted") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'SOAK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d,"exhausted":%d,"counts":%s,"sent":%s}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, all_exhausted,
    json_object(all_counts), json_object(all_sent)))
end
