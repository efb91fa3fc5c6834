-- One API key on every request: wrk -s apikey.lua URL -- <secret>
-- Also used against the baselines (which ignore the header), so every target sends the same
-- bytes. No request() function: wrk sends its one pre-built request as fast as it can.
dofile(os.getenv("BENCH_WRK_DIR") .. "/report.lua")

function init(args)
  wrk.headers["Authorization"] = "Api-Key " .. args[1]
end
