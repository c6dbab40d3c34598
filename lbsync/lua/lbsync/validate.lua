-- lbsync.validate: the strict check of one pool document (a push or the pool file on disk).
--
-- The document is written by lbsync's live driver (Python), which already validated every
-- member; this is the second gate, so that nothing malformed or hostile can reach the balancer
-- even if the socket is reached by something else. Anything not in the schema is an error:
--
--   {"version": 12, "digest": "<32 lowercase hex>", "upstream": "lbs_backend",
--    "backends": [{"name": "web1", "address": "10.0.0.1", "port": 8000, "weight": 1,
--                  "drain": false, "backup": false, "down": false,
--                  "max_fails": 1, "fail_timeout": 10, "max_conns": 0}]}
--
-- max_fails, fail_timeout and max_conns may be absent (nginx's defaults 1, 10 s, 0 = no limit).
-- parse() returns the normalised pool (each backend gets `host`, the text handed to
-- ngx.balancer, and `endpoint`, "host:port" exactly as nginx prints it in $upstream_addr)
-- or nil and a one-line reason that never echoes the offending value.

local cjson = require("cjson.safe").new()   -- a private instance: our settings stay ours
cjson.decode_invalid_numbers(false)           -- no NaN, Infinity or hex numbers
cjson.decode_max_depth(4)                     -- pool > backends > backend > value

local type, tonumber, tostring, pairs = type, tonumber, tostring, pairs
local floor, concat, format = math.floor, table.concat, string.format
local find, sub, byte, ipairs = string.find, string.sub, string.byte, ipairs

local _M = { MAX_BODY = 4194304, MAX_BACKENDS = 10000 }  -- 10,000 backends fit in 4 MiB

local TOP = { version = true, digest = true, upstream = true, backends = true }
local REQUIRED = { "name", "address", "port", "weight", "drain", "backup", "down" }
local BOUNDS = {  -- field = {min, max, default (nil = required)}
    port = { 1, 65535 }, weight = { 1, 256 },
    max_fails = { 0, 1000, 1 }, fail_timeout = { 1, 3600, 10 }, max_conns = { 0, 100000, 0 },
}
local FIELDS = { name = true, address = true, port = true, weight = true, drain = true,
                 backup = true, down = true, max_fails = true, fail_timeout = true,
                 max_conns = true }

local function is_int(v, lo, hi)
    return type(v) == "number" and v == floor(v) and v >= lo and v <= hi
end

-- A JSON object decodes to a table whose keys are all strings.
local function is_object(t)
    if type(t) ~= "table" then return false end
    for k in pairs(t) do
        if type(k) ~= "string" then return false end
    end
    return true
end

-- A JSON array decodes to a table with keys 1..n (cjson cannot tell [] from {}: both are empty).
local function is_array(t)
    if type(t) ~= "table" then return false end
    local n = 0
    for k in pairs(t) do
        if type(k) ~= "number" then return false end
        n = n + 1
    end
    return n == #t
end

-- A field name safe to put in an error line (it may be hostile).
local function label(s)
    s = tostring(s)
    if #s > 40 then s = sub(s, 1, 40) .. "..." end
    return (s:gsub("[^%w_.-]", "?"))
end

-- IPv4 dotted quad, no leading zeros: the octets, or nil.
local function ipv4(s)
    if #s > 15 then return nil end
    local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
    if not a then return nil end
    local out = {}
    for i, part in ipairs({ a, b, c, d }) do
        if #part > 3 or (#part > 1 and byte(part) == 48) then return nil end
        local n = tonumber(part)
        if n > 255 then return nil end
        out[i] = n
    end
    return out
end

-- The 16-bit groups of one side of "::" (nil if malformed); an IPv4 tail becomes two groups.
local function groups(part, v4_ok, out)
    if part == "" then return out end
    local start, len = 1, #part
    while true do
        local colon = find(part, ":", start, true)
        local field = sub(part, start, (colon or len + 1) - 1)
        if field == "" then return nil end
        if not colon and v4_ok and find(field, ".", 1, true) then
            local q = ipv4(field)
            if not q then return nil end
            out[#out + 1] = q[1] * 256 + q[2]
            out[#out + 1] = q[3] * 256 + q[4]
        elseif #field <= 4 and not find(field, "[^0-9A-Fa-f]") then
            out[#out + 1] = tonumber(field, 16)
        else
            return nil
        end
        if not colon then return out end
        start = colon + 1
    end
end

-- IPv6 literal (no brackets, no zone): its 8 groups, or nil.
local function ipv6(s)
    if #s < 2 or #s > 45 or find(s, "[^0-9A-Fa-f:.]") then return nil end
    local dc = find(s, "::", 1, true)
    if not dc then
        local g = groups(s, true, {})
        return g and #g == 8 and g or nil
    end
    local head, tail = sub(s, 1, dc - 1), sub(s, dc + 2)
    if find(tail, "::", 1, true) then return nil end
    local h = groups(head, false, {})
    local t = h and groups(tail, true, {})
    if not t or #h + #t > 7 then return nil end
    for _ = 1, 8 - #h - #t do h[#h + 1] = 0 end
    for i = 1, #t do h[#h + 1] = t[i] end
    return h
end

-- The text nginx prints for an IPv6 address (ngx_inet6_ntop): lowercase hex, the first longest
-- run of two or more zero groups shown as "::". Used so $upstream_addr matches our endpoints.
local function ipv6_text(g)
    local best, best_len, run, run_len = nil, 1, nil, 0
    for i = 1, 9 do
        if i <= 8 and g[i] == 0 then
            if run_len == 0 then run = i end
            run_len = run_len + 1
        else
            if run_len > best_len then best, best_len = run, run_len end
            run_len = 0
        end
    end
    local out = {}
    local i = 1
    while i <= 8 do
        if i == best then            -- "" pieces joined by ":" make the "::"
            if i == 1 then out[#out + 1] = "" end
            out[#out + 1] = ""
            i = i + best_len
            if i > 8 then out[#out + 1] = "" end
        else
            out[#out + 1] = format("%x", g[i])
            i = i + 1
        end
    end
    return concat(out, ":")
end

local function backend(b, i, names, endpoints)
    local at = "backends[" .. (i - 1) .. "]"
    if not is_object(b) then return nil, at .. ": not an object" end
    for k in pairs(b) do
        if not FIELDS[k] then return nil, at .. ": unknown field " .. label(k) end
    end
    for _, k in ipairs(REQUIRED) do
        if b[k] == nil then return nil, at .. "." .. k .. ": missing" end
    end
    local name = b.name
    if type(name) ~= "string" or #name > 128 or not find(name, "^[A-Za-z0-9][A-Za-z0-9._%-]*$") then
        return nil, at .. ".name: must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}"
    end
    if names[name] then return nil, at .. ".name: duplicate" end
    local addr = b.address
    if type(addr) ~= "string" then return nil, at .. ".address: not a string" end
    local host
    if ipv4(addr) then
        host = addr
    else
        local g = ipv6(addr)
        if not g then return nil, at .. ".address: not an IPv4 or IPv6 literal" end
        host = "[" .. ipv6_text(g) .. "]"
    end
    local out = { name = name, address = addr, host = host }
    for k, lim in pairs(BOUNDS) do
        local v = b[k]
        if v == nil then v = lim[3] end
        if not is_int(v, lim[1], lim[2]) then
            return nil, format("%s.%s: must be an integer in %d..%d", at, k, lim[1], lim[2])
        end
        out[k] = v
    end
    for _, k in ipairs({ "drain", "backup", "down" }) do
        if type(b[k]) ~= "boolean" then return nil, at .. "." .. k .. ": not a boolean" end
        out[k] = b[k]
    end
    out.endpoint = host .. ":" .. out.port
    if endpoints[out.endpoint] then return nil, at .. ": duplicate endpoint" end
    names[name], endpoints[out.endpoint] = true, true
    return out
end

-- parse(body, upstream) -> pool | nil, reason. `upstream` is the name the pool must carry.
function _M.parse(body, upstream)
    if type(body) ~= "string" or body == "" then return nil, "empty body" end
    if #body > _M.MAX_BODY then return nil, "body larger than 4 MiB" end
    local doc = cjson.decode(body)
    if doc == nil then return nil, "invalid JSON" end
    if not is_object(doc) then return nil, "not a JSON object" end
    for k in pairs(doc) do
        if not TOP[k] then return nil, "unknown field " .. label(k) end
    end
    if not is_int(doc.version, 1, 9007199254740991) then
        return nil, "version: must be a positive integer"
    end
    local digest = doc.digest
    if type(digest) ~= "string" or #digest ~= 32 or find(digest, "[^0-9a-f]") then
        return nil, "digest: must be 32 lowercase hex digits"
    end
    if type(doc.upstream) ~= "string" then return nil, "upstream: not a string" end
    if doc.upstream ~= upstream then return nil, "upstream: does not match this pool" end
    local list = doc.backends
    if not is_array(list) then return nil, "backends: not an array" end
    if #list > _M.MAX_BACKENDS then return nil, "backends: more than 10000" end
    local pool = { version = doc.version, digest = digest, upstream = upstream, backends = {} }
    local names, endpoints = {}, {}
    for i = 1, #list do
        local b, err = backend(list[i], i, names, endpoints)
        if not b then return nil, err end
        pool.backends[i] = b
    end
    return pool
end

return _M
