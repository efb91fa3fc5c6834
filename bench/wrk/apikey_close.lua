-- apikey.lua on a new connection for every request (`Connection: close`): over TLS, every
-- request pays a full handshake. wrk -s apikey_close.lua URL -- <secret>
dofile(os.getenv("BENCH_WRK_DIR") .. "/report.lua")

function init(args)
  wrk.headers["Authorization"] = "Api-Key " .. args[1]
  wrk.headers["Connection"] = "close"
end
