-- lbsync.pool: where a pool lives inside nginx, and how it gets there from the file on disk.
--
-- One lua_shared_dict (name below, declared by lbs_upstream_live.conf) holds, per upstream:
--   pool:<upstream>   "<source> <stored_at> <version> <digest>\n<pool JSON>": the bytes exactly
--                     as pushed or read from the file, behind one line saying where they came
--                     from (so a brief read-back needs no JSON decoding). One entry, so a store
--                     is one atomic set (safe_set: a full dict fails the push, it never evicts
--                     another pool or a connection counter).
--   gen:<upstream>    an integer bumped after every store that changed the bytes. Each worker
--                     keeps the decoded pool and its balancing structures and compares this one
--                     number per request (lbsync.balancer), so a push reaches every worker on
--                     its next request, and nothing is decoded on the hot path.
--   c:<upstream>:<endpoint>  connections in flight (least_conn only), see lbsync.balancer.
--
-- A shared dict survives `nginx -s reload` (same name and size) and is empty after a restart:
-- that is why the master loads the pool file at every start and reload (lbsync.init).

local validate = require "lbsync.validate"

local ngx = ngx
local find, sub, format, tonumber = string.find, string.sub, string.format, tonumber

local _M = { DICT = "lbsync_live" }

local function dict()
    local d = ngx.shared[_M.DICT]
    if not d then error("lua_shared_dict " .. _M.DICT .. " is not declared") end
    return d
end

-- The generation counter must exist before the first store: incr on an existing key never
-- needs memory, so a store can never leave the bytes changed and the counter unbumped.
function _M.prepare(upstream)
    dict():safe_add("gen:" .. upstream, 0)
end

function _M.generation(upstream)
    return dict():get("gen:" .. upstream)
end

-- read(upstream) -> body, meta {source, stored_at, version, digest} | nil when nothing is held.
function _M.read(upstream)
    local entry = dict():get("pool:" .. upstream)
    if not entry then return nil end
    local nl = find(entry, "\n", 1, true)
    local source, at, version, digest = entry:match("^(%S+) (%S+) (%d+) (%x+)\n")
    return sub(entry, nl + 1), { source = source, stored_at = tonumber(at),
                                 version = tonumber(version), digest = digest }
end

-- store(upstream, body, p, source) -> true (stored), false (the same bytes were already held),
-- or nil, err (dict full: nothing changed). `p` is what validate.parse(body) returned.
function _M.store(upstream, body, p, source)
    local d = dict()
    local held = _M.read(upstream)
    if held == body then return false end
    local head = format("%s %.3f %d %s\n", source, ngx.now(), p.version, p.digest)
    local ok, err = d:safe_set("pool:" .. upstream, head .. body)
    if not ok then return nil, err end
    if not d:incr("gen:" .. upstream, 1) then d:safe_set("gen:" .. upstream, 1) end
    return true
end

-- load_file(upstream, path): in the master at start and reload. A missing, unreadable, oversized
-- or invalid file is logged and changes nothing (on a reload the dict keeps what was pushed;
-- on a fresh start the upstream answers 503 until lbsync pushes). A valid file always wins: the
-- driver writes it before every push, so it is never older than what was pushed.
function _M.load_file(upstream, path)
    local f, err = io.open(path, "rb")
    if not f then
        ngx.log(ngx.NOTICE, "lbsync: no pool file for ", upstream, " (", err, "): keeping ",
                _M.read(upstream) and "the pool already held" or "no pool (503 until a push)")
        return
    end
    local body = f:read(validate.MAX_BODY + 1)
    f:close()
    local pool, why = validate.parse(body or "", upstream)
    if not pool then
        ngx.log(ngx.ERR, "lbsync: pool file ", path, " rejected: ", why, "; nothing changed")
        return
    end
    local changed, serr = _M.store(upstream, body, pool, "file")
    if changed == nil then
        ngx.log(ngx.ERR, "lbsync: pool file ", path, " not stored: ", serr)
    else
        ngx.log(ngx.NOTICE, "lbsync: pool ", upstream, " version ", pool.version, " (",
                #pool.backends, " backends) ", changed and "loaded from " or "already held, ", path)
    end
end

return _M
