"""The numba kernels behind :mod:`.fused_views` (compiled once, cached on disk by numba).

Layout: a view is made in planar float32 (3, S, S) scratch: resize (horizontal pass from the
HWC uint8 source, then vertical), colour steps in place, blur (two separable passes), and the
last pass writes the normalised, flipped view. Parameter columns are named in fused_views.

No ``fastmath``: strict IEEE arithmetic, so that every compiled copy of a kernel rounds alike.
numba compiles each function into its own module and links a re-optimised copy of it into each
caller; the JIT binds a call to the first copy it loaded, which is the callee's own module in a
process that compiles the kernels and the caller's copy in one that loads them from the cache.
With fast-math (reassociated sums, fused multiply-adds) the copies were vectorised differently
and the views of a first run differed from all later ones (issue 21, part 8). The hot loops
are written to be fast without it: element-wise across a row (mean luma sums columns), the blur
adds the two pixels of each weight before multiplying, hue divides once, the resize weights use
reciprocals.
"""

import math

import numpy as np
from numba import njit

# Column numbers (kept equal to fused_views.P_*; a test checks them).
P_Y, P_X, P_H, P_W, P_FLIP, P_JITTER = 0, 1, 2, 3, 4, 5
P_BRIGHT, P_CONTRAST, P_SAT, P_HUE, P_ORDER, P_GRAY = 6, 7, 8, 9, 10, 14
P_SIGMA, P_RADIUS, P_SOLAR, P_KEEP, P_MEAN, P_STD = 15, 16, 17, 18, 19, 22
LR, LG, LB = np.float32(0.299), np.float32(0.587), np.float32(0.114)


@njit(cache=True)
def resample_weights(start, length, out_len, in_len):
    """Triangle-filter taps mapping source pixels [start, start+length) onto ``out_len`` pixels,
    the filter widened by the scale when shrinking (antialias). Returns (first, count, weights)."""
    scale = length / out_len
    support = max(scale, 1.0)
    ntaps = int(math.ceil(support)) * 2 + 3
    first = np.empty(out_len, np.int64)
    count = np.empty(out_len, np.int64)
    weights = np.zeros((out_len, ntaps), np.float32)
    lo_lim = start
    hi_lim = start + length
    inv = 1.0 / support                 # products, not a division a tap (no fast-math to do it)
    for o in range(out_len):
        center = start + (o + 0.5) * scale
        lo = max(int(math.floor(center - support)), lo_lim)
        hi = min(int(math.ceil(center + support)), hi_lim)
        total = 0.0
        n = 0
        for s in range(lo, hi):
            w = 1.0 - abs((s + 0.5 - center) * inv)
            if w < 0.0:
                w = 0.0
            if n < ntaps:
                weights[o, n] = w
                total += w
                n += 1
        if total > 0.0:
            itot = 1.0 / total
            for t in range(n):
                weights[o, t] = weights[o, t] * itot
        first[o] = lo
        count[o] = n
    return first, count, weights


@njit(cache=True)
def resize_into(src, y0, x0, h, w, buf, line):
    """Crop box (y0, x0, h, w) of HWC uint8 ``src`` resized into planar float ``buf`` (3, OH, OW).

    Row by row: the vertical pass makes one interleaved row of the crop's width in ``line``
    (3 * w floats, contiguous, so it vectorises), the horizontal pass turns it into the output
    row; the scratch stays in cache."""
    OH, OW = buf.shape[1], buf.shape[2]
    fx, cx, wx = resample_weights(x0, w, OW, src.shape[1])
    fy, cy, wy = resample_weights(y0, h, OH, src.shape[0])
    n = 3 * w
    flat = src.reshape((src.shape[0], src.shape[1] * 3))
    for o in range(OH):
        for x in range(n):
            line[x] = 0.0
        for t in range(cy[o]):
            wt = wy[o, t]
            row = flat[fy[o] + t, 3 * x0:3 * x0 + n]
            for x in range(n):
                line[x] += wt * np.float32(row[x])
        for q in range(OW):
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            f = 3 * (fx[q] - x0)
            for t in range(cx[q]):
                wt = wx[q, t]
                a0 += wt * line[f + 3 * t]
                a1 += wt * line[f + 3 * t + 1]
                a2 += wt * line[f + 3 * t + 2]
            buf[0, o, q] = a0
            buf[1, o, q] = a1
            buf[2, o, q] = a2


@njit(cache=True)
def clamp255(v):
    return min(max(v, np.float32(0.0)), np.float32(255.0))


@njit(cache=True)
def mean_luma(buf):
    """Mean luma, summed down the columns (element-wise across a row, so that it vectorises with
    strict IEEE arithmetic: no reassociation of a reduction), then across them."""
    H, W = buf.shape[1], buf.shape[2]
    cols = np.zeros(W, np.float64)
    for y in range(H):
        R, G, B = buf[0, y], buf[1, y], buf[2, y]
        for x in range(W):
            cols[x] += LR * R[x] + LG * G[x] + LB * B[x]
    acc = 0.0
    for x in range(W):
        acc += cols[x]
    return np.float32(acc / (H * W))


@njit(cache=True)
def hue_shift(buf, shift):
    """Shift H in HSV by ``shift`` turns, S and V kept; branch-free so that it vectorises.

    With V = max, d = max - min and h6 = 6 H: each channel is V - d * clamp(min(k, 4 - k), 0, 1)
    with k = (n + h6) mod 6 and n = 5, 3, 1 for R, G, B (the closed form of HSV -> RGB)."""
    H, W = buf.shape[1], buf.shape[2]
    s6 = np.float32(6.0 * (shift - math.floor(shift)))
    zero = np.float32(0.0)
    one = np.float32(1.0)
    six = np.float32(6.0)
    for y in range(H):
        R, G, B = buf[0, y], buf[1, y], buf[2, y]
        for x in range(W):
            r, g, b = R[x], G[x], B[x]
            mx = max(r, max(g, b))
            mn = min(r, min(g, b))
            d = mx - mn
            dd = d if d > zero else one
            # one division a pixel (the three of the textbook form all run once it is branch-free)
            q = (g - b if mx == r else (b - r if mx == g else r - g)) / dd
            h = q if mx == r else (q + np.float32(2.0) if mx == g else q + np.float32(4.0))
            h = h + six if h < zero else h
            h = h + s6
            h = h - six if h >= six else h
            kr = np.float32(5.0) + h
            kr = kr - six if kr >= six else kr
            kr = kr - six if kr >= six else kr
            kg = np.float32(3.0) + h
            kg = kg - six if kg >= six else kg
            kg = kg - six if kg >= six else kg
            kb = one + h
            kb = kb - six if kb >= six else kb
            R[x] = mx - d * min(max(min(kr, np.float32(4.0) - kr), zero), one)
            G[x] = mx - d * min(max(min(kg, np.float32(4.0) - kg), zero), one)
            B[x] = mx - d * min(max(min(kb, np.float32(4.0) - kb), zero), one)


@njit(cache=True)
def jitter(buf, prm):
    H, W = buf.shape[1], buf.shape[2]
    for k in range(4):
        op = int(prm[P_ORDER + k])
        if op == 0:
            f = np.float32(prm[P_BRIGHT])
            for c in range(3):
                for y in range(H):
                    for x in range(W):
                        buf[c, y, x] = clamp255(buf[c, y, x] * f)
        elif op == 1:
            f = np.float32(prm[P_CONTRAST])
            m = mean_luma(buf) * (np.float32(1.0) - f)
            for c in range(3):
                for y in range(H):
                    for x in range(W):
                        buf[c, y, x] = clamp255(buf[c, y, x] * f + m)
        elif op == 2:
            f = np.float32(prm[P_SAT])
            g1 = np.float32(1.0) - f
            for y in range(H):
                for x in range(W):
                    r, g, b = buf[0, y, x], buf[1, y, x], buf[2, y, x]
                    l = (LR * r + LG * g + LB * b) * g1
                    buf[0, y, x] = clamp255(r * f + l)
                    buf[1, y, x] = clamp255(g * f + l)
                    buf[2, y, x] = clamp255(b * f + l)
        else:
            shift = prm[P_HUE]
            if shift != 0.0:
                hue_shift(buf, shift)


@njit(cache=True)
def grayscale(buf):
    H, W = buf.shape[1], buf.shape[2]
    for y in range(H):
        for x in range(W):
            l = LR * buf[0, y, x] + LG * buf[1, y, x] + LB * buf[2, y, x]
            buf[0, y, x] = l
            buf[1, y, x] = l
            buf[2, y, x] = l


@njit(cache=True)
def channel_drop(buf, prm):
    """Keep channel ``prm[P_KEEP]``; the others become the normalisation mean (0 once normalised)."""
    keep = int(prm[P_KEEP])
    for c in range(3):
        if c != keep:
            buf[c, :, :] = np.float32(255.0 * prm[P_MEAN + c])


@njit(cache=True)
def colour(buf, prm):
    """Colour jitter (if it fires, ops in the drawn order), grayscale, channel drop: in place.

    One pass over the view per op: each loop runs over one plane, so it vectorises (fusing the
    ops per pixel or per row measured slower: the hue shift is branchy, and contrast needs the
    mean luma of the image at its place in the order)."""
    if prm[P_JITTER] != 0.0:
        jitter(buf, prm)
    if prm[P_GRAY] != 0.0:
        grayscale(buf)
    if prm[P_KEEP] >= 0.0:
        channel_drop(buf, prm)


@njit(cache=True)
def reflect101(i, n):
    if n == 1:
        return 0
    period = 2 * n - 2
    i = abs(i) % period
    return i if i < n else period - i


@njit(cache=True)
def finish_row(row, c, y, prm, out):
    """Solarize, normalise and flip one row of channel ``c`` into ``out[c, y]``."""
    W = row.shape[0]
    thr = np.float32(prm[P_SOLAR])
    scale = np.float32(1.0 / (255.0 * prm[P_STD + c]))
    shift = np.float32(prm[P_MEAN + c] / prm[P_STD + c])
    dst = out[c, y]
    if thr >= 0.0:
        for x in range(W):
            v = row[x]
            if v >= thr:
                row[x] = np.float32(255.0) - v
    if prm[P_FLIP] != 0.0:
        for x in range(W):
            dst[W - 1 - x] = row[x] * scale - shift
    else:
        for x in range(W):
            dst[x] = row[x] * scale - shift


@njit(cache=True)
def finish(buf, prm, out):
    """Solarize, normalise and flip, written to ``out`` (3, H, W)."""
    for c in range(3):
        for y in range(buf.shape[1]):
            finish_row(buf[c, y], c, y, prm, out)


@njit(cache=True)
def blur(buf, tmp, prm, out):
    """Separable Gaussian (sigma ``prm[P_SIGMA]``, taps [-radius, radius] normalised, reflect-101
    borders) of ``buf``, then :func:`finish` row by row into ``out``.

    The kernel is even (taps ``t`` and ``-t`` weigh the same), so each pass adds the two pixels a
    weight applies to, then multiplies once: radius + 1 products a pixel, not 2 radius + 1."""
    H, W = buf.shape[1], buf.shape[2]
    sigma = prm[P_SIGMA]
    radius = int(prm[P_RADIUS])
    n = 2 * radius + 1
    k = np.empty(n, np.float32)
    tot = 0.0
    for t in range(-radius, radius + 1):
        v = math.exp(-0.5 * (t / sigma) ** 2)          # even in t: k[radius - t] == k[radius + t]
        k[t + radius] = v
        tot += v
    for t in range(n):
        k[t] = k[t] / tot
    idx = np.empty(W + 2 * radius, np.int64)
    for x in range(W + 2 * radius):
        idx[x] = reflect101(x - radius, W)
    idy = np.empty(H + 2 * radius, np.int64)
    for y in range(H + 2 * radius):
        idy[y] = reflect101(y - radius, H)
    pad = np.empty(W + 2 * radius, np.float32)
    acc = np.empty(W, np.float32)
    kc = k[radius]
    for c in range(3):
        # horizontal: buf -> tmp
        for y in range(H):
            for x in range(W + 2 * radius):
                pad[x] = buf[c, y, idx[x]]
            mid = pad[radius:radius + W]
            for x in range(W):
                acc[x] = kc * mid[x]
            for t in range(radius):
                kt = k[t]
                a = pad[t:t + W]
                b = pad[n - 1 - t:n - 1 - t + W]
                for x in range(W):
                    acc[x] += kt * (a[x] + b[x])
            tmp[c, y, :] = acc
        # vertical: tmp -> finished rows of out
        for y in range(H):
            mid = tmp[c, idy[y + radius]]
            for x in range(W):
                acc[x] = kc * mid[x]
            for t in range(radius):
                kt = k[t]
                a = tmp[c, idy[y + t]]
                b = tmp[c, idy[y + n - 1 - t]]
                for x in range(W):
                    acc[x] += kt * (a[x] + b[x])
            finish_row(acc, c, y, prm, out)


@njit(cache=True)
def make_view(src, prm, out, buf, tmp, line):
    resize_into(src, int(prm[P_Y]), int(prm[P_X]), int(prm[P_H]), int(prm[P_W]), buf, line)
    if prm[P_JITTER] != 0.0 or prm[P_GRAY] != 0.0 or prm[P_KEEP] >= 0.0:
        colour(buf, prm)
    if prm[P_SIGMA] > 0.0 and prm[P_RADIUS] > 0:
        blur(buf, tmp, prm, out)
    else:
        finish(buf, prm, out)


@njit(cache=True, nogil=True)
def render_range(images, params, owners, out, start, stop):
    """Views ``out[i]`` of ``images[owners[i]]`` (HWC uint8) by ``params[i]``, for ``i`` in
    [start, stop). Releases the GIL: :func:`.fused_views.render` runs ranges in threads."""
    H, W = out.shape[2], out.shape[3]
    wmax = 1
    for i in range(start, stop):
        wmax = max(wmax, int(params[i, P_W]))
    buf = np.empty((3, H, W), np.float32)
    tmp = np.empty((3, H, W), np.float32)
    line = np.empty(3 * wmax, np.float32)
    for i in range(start, stop):
        make_view(images[owners[i]], params[i], out[i], buf, tmp, line)
