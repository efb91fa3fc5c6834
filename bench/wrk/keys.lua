-- Cycles through many API keys, one per line of a file: wrk -s keys.lua URL -- <file> <offset>
-- Each thread starts at its own place in the list (and the run's offset), so successive
-- requests (and successive runs) present different keys.
dofile(os.getenv("BENCH_WRK_DIR") .. "/report.lua")

local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end

local keys, index, path
function init(args)
  keys = {}
  for line in io.lines(args[1]) do
    keys[#keys + 1] = line
  end
  local offset = tonumber(args[2] or "0")
  index = (offset + (tid or 0) * math.floor(#keys / 16)) % #keys
  path = wrk.path
end

function request()
  index = index + 1
  if index > #keys then index = 1 end
  return wrk.format("GET", path, {["Authorization"] = "Api-Key " .. keys[index]})
end
