-- lbsync.balancer: picks the peer for each request of a live upstream (balancer_by_lua).
--
-- Hot path, per request: one shared-dict `get` of the upstream's generation, then work on
-- worker-local tables only. The decoded pool and its balancing structures are rebuilt when the
-- generation changed (a push or a file load), so a pool update is used by every worker from its
-- next request on. Only least_conn touches shared counters (one incr per attempt, one decrement
-- when it ends, from the log hook the template renders for least_conn only).
--
-- nginx semantics kept:
--   round_robin  smooth weighted round robin (nginx's algorithm; equal weights = plain rotation)
--   least_conn   fewest connections per weight across all workers, ties by weighted round robin
--   hash/ip_hash a consistent ring (lbsync.ring): removing 1 of N backends moves only the keys it
--                owned, ~1/N; ip_hash keys an IPv4 client by its first three octets and an IPv6
--                client by the whole address, as nginx does
--   drain/down   never chosen (in-flight requests on a drained backend finish by themselves)
--   backup       chosen only when no primary can take this attempt
--   max_fails/fail_timeout  passive failures, per worker (like nginx without a `zone`): after
--                max_fails failures within fail_timeout the backend is skipped for fail_timeout.
--                A failure is seen when nginx asks for the next peer (get_last_failure), i.e. for
--                every attempt that is retried; the failure of a request's last attempt is not
--                counted. When every usable backend is marked failed the marks are cleared and
--                the request goes on (nginx clears them too, after failing that one request).
--   max_conns    enforced with least_conn only, across all workers (nginx with a `zone`); the
--                other algorithms hold it but do not enforce it: that would need a Lua log hook
--                on every request, about 8 % more nginx CPU per request.
--   retries      on the first attempt set_more_tries(usable backends) lets proxy_next_upstream
--                (capped by proxy_next_upstream_tries) move a failed request to a backend not yet
--                tried in this request ($upstream_addr lists the tried ones).
-- No usable backend: no peer is set, so nginx falls back to the upstream's placeholder
-- `server ... down`, answers 502 "no live upstreams", and the site's error_page turns that into
-- its 503 page (ngx.exit(503) here would become a bare 500).

local ngx_balancer = require "ngx.balancer"
local pool = require "lbsync.pool"
local validate = require "lbsync.validate"
local ring = require "lbsync.ring"

local ngx, ngx_var = ngx, ngx.var
local set_current_peer = ngx_balancer.set_current_peer
local set_more_tries = ngx_balancer.set_more_tries
local get_last_failure = ngx_balancer.get_last_failure
local now = ngx.now
local gmatch, find, sub = string.gmatch, string.find, string.sub

local _M = {}
local configs = {}      -- upstream name -> its settings and this worker's compiled pool
local DICT              -- the shared dict, looked up once per worker
local tie = {}          -- least_conn: reusable list of equally loaded peers

-- configure(name, {algorithm=, hash_var=}): from init_by_lua, in the master; workers inherit it.
function _M.configure(name, opts)
    configs[name] = {
        name = name, algorithm = opts.algorithm, hash_var = opts.hash_var,
        hashed = opts.algorithm == "hash" or opts.algorithm == "ip_hash",
        gen_key = "gen:" .. name, fstate = {}, compiled = nil,
    }
end

function _M.configured(name)
    return configs[name]
end

-- compile: the worker's view of one pool version: peer objects, usable primaries and backups,
-- and the structure the algorithm needs. Passive-failure state is kept per endpoint across
-- versions, so a push does not forget that a backend has been failing.
local function compile(cfg, gen)
    local body = pool.read(cfg.name)
    local p, why
    if body then p, why = validate.parse(body, cfg.name) end
    if body and not p then   -- cannot happen: only validated bytes are stored
        ngx.log(ngx.ERR, "lbsync: held pool ", cfg.name, " does not parse (", why, "): 503")
    end
    local c = { gen = gen, primaries = { i = 0 }, backups = { i = 0 }, by_endpoint = {},
                ckeys = {}, counting = cfg.algorithm == "least_conn" }
    local keep = {}
    for _, b in ipairs(p and p.backends or {}) do
        local fs = cfg.fstate[b.endpoint] or { fails = 0, first = 0, last = 0 }
        keep[b.endpoint] = fs
        local peer = { b = b, endpoint = b.endpoint, host = b.host, port = b.port,
                       weight = b.weight, max_fails = b.max_fails, fail_timeout = b.fail_timeout,
                       max_conns = c.counting and b.max_conns or 0,
                       ckey = "c:" .. cfg.name .. ":" .. b.endpoint, fs = fs, cw = 0 }
        c.by_endpoint[b.endpoint], c.ckeys[peer.ckey] = peer, true
        if not b.drain and not b.down then
            local list = b.backup and c.backups or c.primaries
            list[#list + 1] = peer
        end
    end
    if c.counting then           -- idle counters of backends that left the pool
        local before = cfg.compiled and cfg.compiled.by_endpoint or {}
        for endpoint, peer in pairs(before) do
            if not c.by_endpoint[endpoint] and (DICT:get(peer.ckey) or 0) <= 0 then
                DICT:delete(peer.ckey)
            end
        end
    end
    cfg.fstate = keep
    for _, list in ipairs({ c.primaries, c.backups }) do
        list.equal = true
        for i = 2, #list do
            if list[i].weight ~= list[1].weight then list.equal = false end
        end
        if cfg.hashed then list.ring = ring.build(list) end
    end
    c.tries = #c.primaries + #c.backups
    cfg.compiled = c
    return c
end

-- Is `p` out for a while after max_fails failures? (The clock is read only if it has failed.)
local function failed(p)
    local fs = p.fs
    return fs.fails ~= 0 and p.max_fails ~= 0 and fs.fails >= p.max_fails
           and now() - fs.last <= p.fail_timeout
end

-- Can `p` take this attempt? Not tried yet in this request, not failed, below max_conns.
local function usable(p, tried)
    if tried and tried[p.endpoint] then return false end
    if p.fs.fails ~= 0 and failed(p) then return false end
    if p.max_conns ~= 0 and (DICT:get(p.ckey) or 0) >= p.max_conns then return false end
    return true
end

-- Smooth weighted round robin over the usable peers of `list` (nginx's ngx_http_upstream_get_peer).
local function swrr(list, n, tried)
    local best, total = nil, 0
    for i = 1, n do
        local p = list[i]
        if usable(p, tried) then
            p.cw = p.cw + p.weight
            total = total + p.weight
            if not best or p.cw > best.cw then best = p end
        end
    end
    if best then best.cw = best.cw - total end
    return best
end

local function round_robin(list, tried)
    local n = #list
    if not list.equal then return swrr(list, n, tried) end
    local i = list.i
    for _ = 1, n do              -- equal weights: smooth WRR is a plain rotation, O(1)
        i = i + 1
        if i > n then i = 1 end
        local p = list[i]
        if usable(p, tried) then
            list.i = i
            return p
        end
    end
end

-- Fewest connections per weight (shared counters); ties by smooth WRR, as nginx does.
local function least_conn(list, tried)
    local best, best_c, n = nil, 0, 0
    for i = 1, #list do
        local p = list[i]
        if usable(p, tried) then
            local c = DICT:get(p.ckey) or 0
            if not best or c * best.weight < best_c * p.weight then
                best, best_c, n = p, c, 1
                tie[1] = p
            elseif c * best.weight == best_c * p.weight then
                n = n + 1
                tie[n] = p
            end
        end
    end
    if n > 1 then return swrr(tie, n, nil) end
    return best
end

local function hash_key(cfg)
    if cfg.algorithm == "hash" then return ngx_var[cfg.hash_var] or "" end
    local addr = ngx_var.remote_addr or ""
    if find(addr, ":", 1, true) then return addr end   -- IPv6: the whole address
    local dot = find(addr, "%.%d+$")                    -- IPv4: the first three octets
    return dot and sub(addr, 1, dot - 1) or addr
end

local function pick_in(alg, list, tried, h)
    if #list == 0 then return nil end
    if alg == "round_robin" then return round_robin(list, tried) end
    if alg == "least_conn" then return least_conn(list, tried) end
    return ring.find(list.ring, h, usable, tried)
end

-- Primaries first; backups only when no primary can take this attempt.
local function pick(cfg, c, tried, h)
    local alg = cfg.algorithm
    return pick_in(alg, c.primaries, tried, h) or pick_in(alg, c.backups, tried, h)
end

-- nginx: "all peers failed, mark them as live for quick recovery". True if any mark was cleared.
local function clear_failures(c)
    local cleared = false
    for _, p in pairs(c.by_endpoint) do
        if p.fs.fails ~= 0 then p.fs.fails, cleared = 0, true end
    end
    return cleared
end

local function mark_failed(p)
    if not p or p.max_fails == 0 then return end
    local fs, t = p.fs, now()
    if t - fs.first > p.fail_timeout then fs.fails, fs.first = 0, t end   -- a new window
    fs.fails, fs.last = fs.fails + 1, t
    if fs.fails == p.max_fails then
        ngx.log(ngx.WARN, "lbsync: upstream server ", p.endpoint, " (", p.b.name,
                ") temporarily disabled for ", p.fail_timeout, " s in this worker")
    end
end

-- Is `key` the counter of a backend in a pool this worker balances?
local function in_pool(key)
    for _, cfg in pairs(configs) do
        local c = cfg.compiled
        if c and c.ckeys[key] then return true end
    end
    return false
end

-- Connection counters live while their backend is in the pool or has requests in flight (the
-- last decrement of a departed backend, or compile if it is idle, deletes them), and are created
-- with safe_add, so they can never evict a pool from a full dict (then a request is simply not
-- counted). A decrement that finds no counter is dropped.
local function count(key, delta)
    local v = DICT:incr(key, delta)
    if v == nil then
        if delta > 0 then
            local ok, err = DICT:safe_add(key, delta)
            if not ok and err == "exists" then DICT:incr(key, delta) end
        end
    elseif v <= 0 then
        if v < 0 then DICT:incr(key, -v) end   -- never below 0: that would attract traffic
        if not in_pool(key) then DICT:delete(key) end
    end
end

-- balance(name): the body of balancer_by_lua_block.
function _M.balance(name)
    local cfg = configs[name]
    if not cfg then return end   -- init_by_lua did not configure it (logged there): 503
    DICT = DICT or ngx.shared[pool.DICT]
    local gen = DICT:get(cfg.gen_key)
    local c = cfg.compiled
    if not c or c.gen ~= gen then c = compile(cfg, gen) end

    local state = get_last_failure()
    local tried
    if state then   -- a retry: nginx is moving this request on to another peer
        tried = {}
        local last
        for tok in gmatch(ngx_var.upstream_addr or "", "[^ ,]+") do
            if tok ~= ":" then tried[tok], last = true, tok end
        end
        if state == "failed" and last then mark_failed(c.by_endpoint[last]) end
        if c.counting then
            local counted = ngx_var.lbsync_peer
            if counted and counted ~= "" then
                count(counted, -1)
                ngx_var.lbsync_peer = ""
            end
        end
    end

    local h = cfg.hashed and ring.hash(hash_key(cfg))
    local p = pick(cfg, c, tried, h)
    if not p and c.tries > 0 and clear_failures(c) then p = pick(cfg, c, tried, h) end
    if not p then return end   -- placeholder `down` server -> 502 -> the site's 503 page

    local ok, err = set_current_peer(p.host, p.port)
    if not ok then
        ngx.log(ngx.ERR, "lbsync: set_current_peer ", p.endpoint, ": ", err)
        return
    end
    if c.counting then
        ngx_var.lbsync_peer = p.ckey   -- first: if this failed, nothing would be counted
        count(p.ckey, 1)
    end
    if not state and c.tries > 1 then set_more_tries(c.tries) end
end

-- log(): the http-level log_by_lua of a least_conn upstream. Ends the count of a request's last
-- attempt; every other request only reads an empty variable.
function _M.log()
    local counted = ngx_var.lbsync_peer
    if counted ~= "" and counted then
        DICT = DICT or ngx.shared[pool.DICT]
        count(counted, -1)
    end
end

-- status(name): this worker's view, for GET /pools/<name> (compiled first if a push is newer):
-- its generation and, per endpoint, {fails, failed} (passive failures are per worker) and
-- conns (in flight across all workers; counted for least_conn only).
function _M.status(name)
    local cfg = configs[name]
    DICT = DICT or ngx.shared[pool.DICT]
    local gen = DICT:get(cfg.gen_key)
    local c = cfg.compiled
    if not c or c.gen ~= gen then c = compile(cfg, gen) end
    local peers = {}
    for endpoint, p in pairs(c.by_endpoint) do
        peers[endpoint] = { fails = p.fs.fails, failed = failed(p), conns = DICT:get(p.ckey) or 0 }
    end
    return { generation = c.gen, peers = peers }
end

return _M
