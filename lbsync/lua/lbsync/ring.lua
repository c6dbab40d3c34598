-- lbsync.ring: the consistent-hash ring behind `hash` and `ip_hash` (like nginx's
-- `hash ... consistent`, ketama-style, though not point-for-point the same ring as nginx's).
--
-- Each backend owns POINTS points per weight unit, derived from a hash of its endpoint alone; a
-- key belongs to the first point clockwise from hash(key). So removing 1 of N backends moves
-- exactly the keys it owned (~1/N) and adding one takes ~1/(N+1) from the others. If the owner
-- cannot take the request (failed, or already tried in this request) the walk goes
-- on clockwise, as nginx's does.
--
-- Large pools get fewer points per weight unit (160, 80, 40, ... at least one per backend) so a
-- ring stays under MAX_POINTS; crossing such a step (the total weight passing 820, 1639, 3277,
-- ...) reshuffles keys once. Building is O(points): the points are sorted by a counting sort on
-- their top bits (about one point per bucket), and that bucket index also makes a lookup O(1).

local bit = require "bit"
local crc32 = ngx.crc32_long
local band, bxor, rshift, tobit = bit.band, bit.bxor, bit.rshift, bit.tobit
local floor = math.floor

local _M = { POINTS = 160, MAX_POINTS = 131072 }

local GOLDEN = 0x9e3779b9      -- spacing between a backend's successive point seeds

-- (a * b) mod 2^32 for 32-bit a and b, exact in doubles (each partial product < 2^49).
local function mul32(a, b)
    return tobit(band(a, 0xffff) * b + tobit(rshift(a, 16) * b) * 65536)
end

-- murmur3's finaliser: spreads close inputs over the whole 32-bit range. Unsigned result.
local function mix(h)
    h = bxor(h, rshift(h, 16))
    h = mul32(h, 0x85ebca6b)
    h = bxor(h, rshift(h, 13))
    h = mul32(h, 0xc2b2ae35)
    h = bxor(h, rshift(h, 16))
    if h < 0 then h = h + 4294967296 end
    return h
end

-- hash(s): crc32 (fast, in C) then the finaliser. crc32 alone is linear: sequential keys such
-- as "/item/1", "/item/2" would land in clumps and load the backends unevenly.
function _M.hash(s)
    return mix(tobit(crc32(s)))
end

-- build(list): the ring over the peers of `list` (each with .endpoint and .weight).
function _M.build(list)
    local total = 0
    for i = 1, #list do total = total + list[i].weight end
    local per = _M.POINTS
    while total * per > _M.MAX_POINTS and per > 1e-6 do per = per / 2 end

    local raw, rawown, n = {}, {}, 0
    for i = 1, #list do
        local p = list[i]
        local seed = tobit(crc32(p.endpoint))
        local k = floor(per * p.weight)
        if k < 1 then k = 1 end
        for j = 1, k do
            n = n + 1
            raw[n], rawown[n] = mix(tobit(seed + j * GOLDEN)), p
        end
    end

    if n == 0 then return { n = 0 } end

    -- counting sort by bucket (the top `bits` bits of a point, ~1 point per bucket):
    -- start[b] = index of the first point of bucket b - 1 (1-based)
    local bits = 4
    while bits < 16 and 2 ^ bits < n do bits = bits + 1 end
    local shift, BUCKETS = 32 - bits, 2 ^ bits
    local start = {}
    for b = 1, BUCKETS + 1 do start[b] = 0 end
    for k = 1, n do
        local b = rshift(tobit(raw[k]), shift) + 1
        start[b] = start[b] + 1
    end
    local at = 1
    for b = 1, BUCKETS + 1 do
        local count = start[b]
        start[b] = at
        at = at + count
    end
    local cursor, pts, owners = {}, {}, {}
    for b = 1, BUCKETS do cursor[b] = start[b] end
    for k = 1, n do
        local v = raw[k]
        local b = rshift(tobit(v), shift) + 1
        local i = cursor[b]
        pts[i], owners[i] = v, rawown[k]
        cursor[b] = i + 1
    end
    for b = 1, BUCKETS do          -- a bucket holds a few points: insertion sort
        local lo, hi = start[b], start[b + 1] - 1
        for i = lo + 1, hi do
            local v, o = pts[i], owners[i]
            local j = i - 1
            while j >= lo and pts[j] > v do
                pts[j + 1], owners[j + 1] = pts[j], owners[j]
                j = j - 1
            end
            pts[j + 1], owners[j + 1] = v, o
        end
    end
    return { pts = pts, owners = owners, start = start, shift = shift, n = n }
end

-- find(ring, h, usable, tried): the first usable owner clockwise from hash `h`, or nil.
function _M.find(r, h, usable, tried)
    local n = r.n
    if n == 0 then return nil end
    local pts = r.pts
    local b = rshift(tobit(h), r.shift) + 1
    local i, stop = r.start[b], r.start[b + 1]
    while i < stop and pts[i] < h do i = i + 1 end   -- at `stop`: the next bucket's first point
    if i > n then i = 1 end
    local owners = r.owners
    local first = owners[i]
    if usable(first, tried) then return first end
    for k = 1, n - 1 do              -- the owner is out for this request: walk on clockwise
        local p = owners[(i - 1 + k) % n + 1]
        if p ~= first and usable(p, tried) then return p end
    end
    return nil
end

return _M
