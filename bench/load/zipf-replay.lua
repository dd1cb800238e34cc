-- zipf-replay.lua: wrk replays a request trace (one path per line, from zipf-trace.py).
--
--   ZIPF_REPLAY_MODE=once|loop wrk -t1 -c<n> ... -s zipf-replay.lua <base url> -- <trace file>
--
-- Run with ONE wrk thread (-t1): every connection then takes the next path of the trace from the
-- thread's shared counter, so the order in which requests are issued is the trace's order.
-- The mode comes from the environment because it decides which callbacks exist, and wrk looks
-- at that when it loads the script, before init() runs.
--   once: issue every path exactly once, then stop when all of them have been answered (the
--         hit-ratio pass). A connection that finds the trace exhausted is parked (delay()) until
--         the last responses are in; nothing beyond the trace is ever requested. Prints a line
--         "zipf-replay: issued=<n> answered=<n> ok=<n> bad=<n>" (ok = status 200).
--         wrk itself sleeps for its whole -d before it collects its threads, so the script then
--         sends wrk a SIGINT (wrk's own way to end a run early; its report stays complete).
--   loop: walk the trace from the start, wrapping around, until wrk's -d ends the run (the
--         throughput pass); no response() callback, so wrk parses no headers or bodies. Prints
--         "zipf-replay: issued=<n>".
local paths, reqs = {}, {}
local n, i = 0, 0
-- wrk calls request() once on thread 0 before the run, to check the request string; that call
-- must not consume a path of the trace.
local verified = false
local mode = os.getenv("ZIPF_REPLAY_MODE") or "loop"
issued, answered, ok, bad = 0, 0, 0, 0   -- globals: done() reads them through thread:get

local threads = {}
function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    local file = args[1] or error("zipf-replay: no trace file (wrk ... -- <trace>)")
    for line in io.lines(file) do
        if line ~= "" then n = n + 1; paths[n] = line end
    end
    if n == 0 then error("zipf-replay: empty trace " .. file) end
    for k = 1, n do reqs[k] = wrk.format("GET", paths[k]) end
end

if mode == "once" then
    -- wrk asks delay() right before each request() of a connection, but other connections may
    -- be asked in between: `reserved` counts the paths promised by delay() and not yet taken, so
    -- exactly n requests go out.
    local reserved = 0
    function delay()
        if i + reserved >= n then return 3600000 end   -- park: the trace is exhausted
        reserved = reserved + 1
        return 0
    end

    function request()
        if not verified then verified = true; return reqs[1] end
        if reserved > 0 then reserved = reserved - 1 end
        i = i + 1
        issued = issued + 1
        if i > n then i = n end   -- only after a reconnect or an hour's park: repeat the last
        return reqs[i]
    end

    function response(status, headers, body)
        answered = answered + 1
        if status == 200 then ok = ok + 1 else bad = bad + 1 end
        if answered == n then
            wrk.thread:stop()
            -- wrk's SIGINT handler ends its sleep(-d). In the background: system() ignores
            -- SIGINT in wrk while the shell runs. $PPID of the shell is wrk.
            os.execute("(sleep 0.1; kill -INT $PPID) >/dev/null 2>&1 &")
        end
    end
elseif mode == "loop" then
    function request()
        if not verified then verified = true; return reqs[1] end
        i = i + 1
        if i > n then i = 1 end
        issued = issued + 1
        return reqs[i]
    end
else
    error("zipf-replay: ZIPF_REPLAY_MODE must be once or loop, not " .. mode)
end

function done(summary, latency, requests)
    for _, t in ipairs(threads) do
        if mode == "once" then
            io.write(string.format("zipf-replay: issued=%d answered=%d ok=%d bad=%d\n",
                t:get("issued"), t:get("answered"), t:get("ok"), t:get("bad")))
        else
            io.write(string.format("zipf-replay: issued=%d\n", t:get("issued")))
        end
    end
end
