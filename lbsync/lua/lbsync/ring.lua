-- lbsync.ring: the consistent-hash ring behind `hash` and `ip_hash` (like nginx's
-- `hash ... consistent`, ketama-style, though not point-for-point the same ring as nginx's).
--
-- Each backend owns POINTS * weight points at crc32("<endpoint>#<i>"); a key (crc32 of the hash
-- key) belongs to the first point clockwise from it. A backend's points depend only on its own
-- endpoint and weight, so removing 1 of N backends moves exactly the keys it owned (~1/N) and
-- adding one takes ~1/(N+1) from the others. If the owner cannot take the request (failed,
-- tried already in this request, at max_conns) the walk goes on clockwise, as nginx's does.
--
-- Very large pools get fewer points per weight unit (160, 80, 40, ... so the ring stays under
-- ~262k points and a rebuild stays in the tens of milliseconds); crossing such a step (total
-- weight passing 1638, 3276, 6553, ...) reshuffles keys once.

local crc32 = ngx.crc32_long
local floor, sort = math.floor, table.sort

local _M = { POINTS = 160, MAX_POINTS = 262144 }

local SHIFT = 16384   -- point * SHIFT + peer index: one number sorts both (index < 16384)

function _M.build(list)
    local total = 0
    for i = 1, #list do total = total + list[i].weight end
    local per = _M.POINTS
    while per > 1 and total * per > _M.MAX_POINTS do per = floor(per / 2) end
    local packed, n = {}, 0
    for i = 1, #list do
        local p = list[i]
        for j = 1, per * p.weight do
            n = n + 1
            packed[n] = crc32(p.endpoint .. "#" .. j) * SHIFT + i
        end
    end
    sort(packed)
    local pts, owners = {}, {}
    for k = 1, n do
        local v = packed[k]
        local i = v % SHIFT
        pts[k], owners[k] = (v - i) / SHIFT, list[i]
    end
    return { pts = pts, owners = owners, n = n }
end

-- find(ring, h, usable, tried, t): the first usable owner clockwise from hash `h`, or nil.
function _M.find(r, h, usable, tried, t)
    local n = r.n
    if n == 0 then return nil end
    local pts = r.pts
    local lo, hi = 1, n + 1          -- first point >= h, n + 1 if none (wraps to 1)
    while lo < hi do
        local mid = floor((lo + hi) / 2)
        if pts[mid] < h then lo = mid + 1 else hi = mid end
    end
    local owners = r.owners
    local first = owners[lo > n and 1 or lo]
    if usable(first, tried, t) then return first end
    for k = 1, n - 1 do              -- the owner is out for this request: walk on
        local idx = (lo - 1 + k) % n + 1
        local p = owners[idx]
        if p ~= first and usable(p, tried, t) then return p end
    end
    return nil
end

return _M
