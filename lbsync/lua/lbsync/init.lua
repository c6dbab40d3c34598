-- lbsync.init: what the nginx master does for a live upstream at start and at every reload
-- (init_by_lua_block in lbs_upstream_live.conf). It runs as root, before the workers exist and
-- before nginx binds its listening sockets, so it can read the root-only pool file.
--
-- `nginx -t` (and `nginx -s ...`) never get here: the Lua module skips its whole VM set-up in those
-- modes, so a test neither reads the pool file nor changes anything (and does not check Lua code).
-- Nothing here may raise: an error in init_by_lua would stop nginx from starting, and a live
-- upstream with no pool only answers 503 until lbsync pushes one.

local balancer = require "lbsync.balancer"
local pool = require "lbsync.pool"

local _M = {}

-- A control socket left behind by a crashed nginx (a clean stop removes it) makes nginx's bind()
-- fail with "Address already in use" and nginx refuses to start. Remove it only when nothing
-- accepts on it (ECONNREFUSED): on a reload the running master still listens there.
local function remove_stale_socket(path)
    if not path or #path >= 108 then return end
    local ffi = require "ffi"
    pcall(ffi.cdef, [[
        int socket(int domain, int type, int protocol);
        int connect(int fd, const void *addr, unsigned int len);
        int close(int fd);
        struct lbsync_sockaddr_un { unsigned short sun_family; char sun_path[108]; };
    ]])
    local AF_UNIX, SOCK_STREAM, ECONNREFUSED = 1, 1, 111
    local fd = ffi.C.socket(AF_UNIX, SOCK_STREAM, 0)
    if fd < 0 then return end
    local sa = ffi.new("struct lbsync_sockaddr_un")
    sa.sun_family = AF_UNIX
    ffi.copy(sa.sun_path, path)
    local rc = ffi.C.connect(fd, sa, ffi.sizeof(sa))
    local errno = ffi.errno()
    ffi.C.close(fd)
    if rc ~= 0 and errno == ECONNREFUSED then
        local ok, err = os.remove(path)
        ngx.log(ok and ngx.WARN or ngx.ERR, "lbsync: stale control socket ", path,
                ok and " removed" or (" could not be removed: " .. tostring(err)))
    end
end

-- run{upstream=, algorithm=, hash_var=, pool_file=, control_socket=}
function _M.run(opts)
    local ok, err = pcall(function()
        require("lbsync.control")   -- loaded here, so workers never read Lua files themselves
        balancer.configure(opts.upstream, opts)
        pool.prepare(opts.upstream)
        remove_stale_socket(opts.control_socket)
        pool.load_file(opts.upstream, opts.pool_file)
    end)
    if not ok then ngx.log(ngx.ERR, "lbsync: init for ", opts.upstream, " failed: ", err) end
end

return _M
