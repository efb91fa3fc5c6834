-- Pre-signed RFC 9421 requests, each used once: wrk -s hmac.lua URL -- <file> [<body file>]
-- Every line of the file is "<Signature-Input>\t<Signature>" with a fresh nonce; thread t of n
-- takes lines t, t+n, t+2n... so no two requests carry the same signature. A thread that runs
-- out starts over, and the replays it then sends are refused (counted as non-2xx errors: the
-- harness sizes the pool so that this does not happen).
dofile(os.getenv("BENCH_WRK_DIR") .. "/report.lua")

local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end

-- Each request is formatted once, in init(), so sending one costs wrk a table lookup, as the
-- API-key scenario's single pre-built request does: wrk shares the cores with the gateway, and a
-- wrk.format() per request would leave the signed scenarios less CPU than the API-key one.
local requests, index
function init(args)
  local nthreads = tonumber(os.getenv("BENCH_WRK_THREADS") or "1")
  local method, body, digest = "GET", nil, nil
  if args[2] then
    local handle = io.open(args[2], "rb")
    body = handle:read("*a")
    handle:close()
    method = "POST"
    digest = args[3]
  end
  requests = {}
  local n = 0
  for line in io.lines(args[1]) do
    if n % nthreads == tid then
      local tab = line:find("\t", 1, true)
      local headers = {["Signature-Input"] = line:sub(1, tab - 1),
                       ["Signature"] = line:sub(tab + 1)}
      if body then
        headers["Content-Digest"] = digest
        headers["Content-Type"] = "application/octet-stream"
      end
      requests[#requests + 1] = wrk.format(method, wrk.path, headers, body)
    end
    n = n + 1
  end
  index = 0
end

function request()
  index = index + 1
  if index > #requests then index = 1 end
  return requests[index]
end
