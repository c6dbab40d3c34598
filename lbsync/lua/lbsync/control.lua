-- lbsync.control: the control endpoint lbsync's live driver talks to (content_by_lua).
--
-- It is served only on a unix socket in a root-only (0700) directory: reaching the socket is the
-- authorisation (nginx creates the socket file itself with mode 0666). Every answer is one line of
-- JSON with Content-Type application/json.
--
--   PUT /pools/<upstream>   body: the pool JSON (see lbsync.validate), at most 4 MiB
--       200 {"version":V,"digest":"D"}  stored (or the same bytes were already held)
--       400 {"error":"..."}             malformed: nothing changed
--       404 {"error":"..."}             <upstream> is not a live upstream of this nginx
--       413 {"error":"..."}             body over 4 MiB (nginx refuses it before reading it all)
--       507 {"error":"..."}             the shared dict is full: nothing changed
--   GET /pools/<upstream>   200 what nginx holds (below), 404 if it holds nothing;
--                           ?brief=1: without "backends" and "worker" (no JSON decoding at all)
--   anything else           404, or 405 with Allow: GET, PUT
--
-- GET answers {"upstream","version","digest","algorithm","source":"push"|"file","stored_at",
-- "generation","backends":[each backend as held, plus "conns" (in flight, all workers; counted
-- for least_conn only) and "fails"/"failed" (passive failures: the answering
-- worker's own view)],"worker":{"pid","generation"}}.

local cjson = require("cjson.safe").new()
local validate = require "lbsync.validate"
local pool = require "lbsync.pool"
local balancer = require "lbsync.balancer"

local ngx = ngx
local format, concat = string.format, table.concat

local _M = {}

local function reply(status, body)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.header["Cache-Control"] = "no-store"
    ngx.print(body, "\n")
end

local function fail(status, message)
    reply(status, cjson.encode({ error = message }))
end

local function read_body()
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    if body then return body end
    local path = ngx.req.get_body_file()   -- only if nginx buffered it to disk
    if not path then return "" end
    local f = io.open(path, "rb")
    if not f then return "" end
    body = f:read(validate.MAX_BODY + 1)
    f:close()
    return body or ""
end

local function put(name)
    local body = read_body()
    local p, why = validate.parse(body, name)
    if not p then
        ngx.log(ngx.WARN, "lbsync: push to pool ", name, " rejected (", why, "): nothing changed")
        return fail(400, why)
    end
    local changed, err = pool.store(name, body, p, "push")
    if changed == nil then
        ngx.log(ngx.ERR, "lbsync: push to pool ", name, " not stored: ", err)
        return fail(507, "shared dict full: " .. tostring(err))
    end
    ngx.log(ngx.NOTICE, "lbsync: pool ", name, " version ", format("%d", p.version), " (",
            #p.backends, " backends) ", changed and "applied" or "unchanged")
    reply(200, format('{"version":%d,"digest":"%s"}', p.version, p.digest))
end

local KEYS = { "name", "address", "port", "weight", "drain", "backup", "down",
               "max_fails", "fail_timeout", "max_conns" }

local function get(name)
    local body, meta = pool.read(name)
    if not body then return fail(404, "no pool held for this upstream") end
    local cfg = balancer.configured(name)
    local head = format('{"upstream":%s,"version":%d,"digest":"%s","algorithm":%s,"source":%s,'
                        .. '"stored_at":%.3f,"generation":%d', cjson.encode(name), meta.version,
                        meta.digest, cjson.encode(cfg.algorithm), cjson.encode(meta.source),
                        meta.stored_at, pool.generation(name) or 0)
    if ngx.var.arg_brief == "1" then return reply(200, head .. "}") end
    local p = validate.parse(body, name)
    if not p then return fail(500, "the held pool does not parse") end   -- never stored so
    local st = balancer.status(name)
    local items = {}
    for i, b in ipairs(p.backends) do
        local out = {}
        for _, k in ipairs(KEYS) do out[k] = b[k] end
        local s = st.peers[b.endpoint]
        out.conns = s and s.conns or 0
        out.fails = s and s.fails or 0
        out.failed = s and s.failed or false
        items[i] = cjson.encode(out)
    end
    reply(200, format('%s,"backends":[%s],"worker":{"pid":%d,"generation":%s}}', head,
                      concat(items, ","), ngx.worker.pid(),
                      st.generation and format("%d", st.generation) or "null"))
end

function _M.handle()
    local name = ngx.var.uri:match("^/pools/([^/]+)$")
    if not name then return fail(404, "not found: use /pools/<upstream>") end
    if not balancer.configured(name) then return fail(404, "unknown upstream") end
    local method = ngx.req.get_method()
    if method == "GET" then return get(name) end
    if method == "PUT" then return put(name) end
    ngx.header["Allow"] = "GET, PUT"
    return fail(405, "method not allowed")
end

-- error_page 413: nginx refused the body (client_max_body_size) without reading it all.
function _M.too_large()
    ngx.log(ngx.WARN, "lbsync: push refused: body larger than 4 MiB; nothing changed")
    return fail(413, "body larger than 4 MiB")
end

return _M
