"""The numba kernels behind :mod:`.fused_views` (compiled once, cached on disk by numba).

Layout: a view is made in planar float32 (3, S, S) scratch: resize (horizontal pass from the
HWC uint8 source, then vertical), colour steps in place, blur (two separable passes), and the
last pass writes the normalised, flipped view. Parameter columns are named in fused_views.
"""

import math

import numpy as np
from numba import njit, prange

# Column numbers (kept equal to fused_views.P_*; a test checks them).
P_Y, P_X, P_H, P_W, P_FLIP, P_JITTER = 0, 1, 2, 3, 4, 5
P_BRIGHT, P_CONTRAST, P_SAT, P_HUE, P_ORDER, P_GRAY = 6, 7, 8, 9, 10, 14
P_SIGMA, P_RADIUS, P_SOLAR, P_KEEP, P_MEAN, P_STD = 15, 16, 17, 18, 19, 22
LR, LG, LB = np.float32(0.299), np.float32(0.587), np.float32(0.114)


@njit(cache=True, fastmath=True)
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
    for o in range(out_len):
        center = start + (o + 0.5) * scale
        lo = max(int(math.floor(center - support)), lo_lim)
        hi = min(int(math.ceil(center + support)), hi_lim)
        total = 0.0
        n = 0
        for s in range(lo, hi):
            w = 1.0 - abs((s + 0.5 - center) / support)
            if w < 0.0:
                w = 0.0
            if n < ntaps:
                weights[o, n] = w
                total += w
                n += 1
        if total > 0.0:
            for t in range(n):
                weights[o, t] = weights[o, t] / total
        first[o] = lo
        count[o] = n
    return first, count, weights


@njit(cache=True, fastmath=True)
def resize_into(src, y0, x0, h, w, buf, rows):
    """Crop box (y0, x0, h, w) of HWC uint8 ``src`` resized into planar float ``buf`` (3, OH, OW).

    Vertical pass first, on whole interleaved rows (contiguous, so it vectorises) into ``rows``
    (OH, 3 * w) float32; then the horizontal pass into ``buf``."""
    OH, OW = buf.shape[1], buf.shape[2]
    fx, cx, wx = resample_weights(x0, w, OW, src.shape[1])
    fy, cy, wy = resample_weights(y0, h, OH, src.shape[0])
    n = 3 * w
    flat = src.reshape((src.shape[0], src.shape[1] * 3))
    for o in range(OH):
        acc = rows[o]
        for x in range(n):
            acc[x] = 0.0
        for t in range(cy[o]):
            wt = wy[o, t]
            line = flat[fy[o] + t, 3 * x0:3 * x0 + n]
            for x in range(n):
                acc[x] += wt * np.float32(line[x])
    for o in range(OH):
        acc = rows[o]
        for q in range(OW):
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            f = 3 * (fx[q] - x0)
            for t in range(cx[q]):
                wt = wx[q, t]
                a0 += wt * acc[f + 3 * t]
                a1 += wt * acc[f + 3 * t + 1]
                a2 += wt * acc[f + 3 * t + 2]
            buf[0, o, q] = a0
            buf[1, o, q] = a1
            buf[2, o, q] = a2


@njit(cache=True, fastmath=True)
def clamp255(v):
    return min(max(v, np.float32(0.0)), np.float32(255.0))


@njit(cache=True, fastmath=True)
def mean_luma(buf):
    H, W = buf.shape[1], buf.shape[2]
    acc = 0.0
    for y in range(H):
        rs = np.float32(0.0)
        for x in range(W):
            rs += LR * buf[0, y, x] + LG * buf[1, y, x] + LB * buf[2, y, x]
        acc += rs
    return np.float32(acc / (H * W))


@njit(cache=True, fastmath=True)
def rgb_hue_shift(r, g, b, shift):
    """Shift the hue of one pixel (0-255 floats) by ``shift`` turns, through HSV."""
    mx = max(r, max(g, b))
    mn = min(r, min(g, b))
    d = mx - mn
    if d <= 0.0:
        return r, g, b
    if mx == r:
        h = (g - b) / d
        if h < 0.0:
            h += 6.0
    elif mx == g:
        h = (b - r) / d + 2.0
    else:
        h = (r - g) / d + 4.0
    h = h / 6.0 + shift
    h -= math.floor(h)
    s = d / mx
    v = mx
    h6 = h * 6.0
    i = int(h6)
    f = h6 - i
    if i > 5:
        i = 5
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    if i == 0:
        return v, t, p
    if i == 1:
        return q, v, p
    if i == 2:
        return p, v, t
    if i == 3:
        return p, q, v
    if i == 4:
        return t, p, v
    return v, p, q


@njit(cache=True, fastmath=True)
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
                for y in range(H):
                    for x in range(W):
                        r, g, b = rgb_hue_shift(buf[0, y, x], buf[1, y, x], buf[2, y, x], shift)
                        buf[0, y, x] = r
                        buf[1, y, x] = g
                        buf[2, y, x] = b


@njit(cache=True, fastmath=True)
def grayscale(buf):
    H, W = buf.shape[1], buf.shape[2]
    for y in range(H):
        for x in range(W):
            l = LR * buf[0, y, x] + LG * buf[1, y, x] + LB * buf[2, y, x]
            buf[0, y, x] = l
            buf[1, y, x] = l
            buf[2, y, x] = l


@njit(cache=True, fastmath=True)
def channel_drop(buf, prm):
    """Keep channel ``prm[P_KEEP]``; the others become the normalisation mean (0 once normalised)."""
    keep = int(prm[P_KEEP])
    for c in range(3):
        if c != keep:
            buf[c, :, :] = np.float32(255.0 * prm[P_MEAN + c])


@njit(cache=True, fastmath=True)
def reflect101(i, n):
    if n == 1:
        return 0
    period = 2 * n - 2
    i = abs(i) % period
    return i if i < n else period - i


@njit(cache=True, fastmath=True)
def blur(buf, tmp, sigma, radius):
    """Separable Gaussian, reflect-101 borders, taps [-radius, radius] normalised."""
    H, W = buf.shape[1], buf.shape[2]
    k = np.empty(2 * radius + 1, np.float32)
    tot = 0.0
    for t in range(-radius, radius + 1):
        v = math.exp(-0.5 * (t / sigma) ** 2)
        k[t + radius] = v
        tot += v
    for t in range(2 * radius + 1):
        k[t] = k[t] / tot
    n = 2 * radius + 1
    idx = np.empty(W + 2 * radius, np.int64)
    for x in range(W + 2 * radius):
        idx[x] = reflect101(x - radius, W)
    idy = np.empty(H + 2 * radius, np.int64)
    for y in range(H + 2 * radius):
        idy[y] = reflect101(y - radius, H)
    pad = np.empty(W + 2 * radius, np.float32)
    acc = np.empty(W, np.float32)
    # horizontal: buf -> tmp
    for c in range(3):
        for y in range(H):
            for x in range(W + 2 * radius):
                pad[x] = buf[c, y, idx[x]]
            acc[:] = 0.0
            for t in range(n):
                kt = k[t]
                for x in range(W):
                    acc[x] += kt * pad[x + t]
            tmp[c, y, :] = acc
    # vertical: tmp -> buf
    for c in range(3):
        for y in range(H):
            acc[:] = 0.0
            for t in range(n):
                kt = k[t]
                r = idy[y + t]
                for x in range(W):
                    acc[x] += kt * tmp[c, r, x]
            buf[c, y, :] = acc


@njit(cache=True, fastmath=True)
def finish(buf, prm, out):
    """Solarize, normalise and flip, written to ``out`` (3, S, S)."""
    H, W = buf.shape[1], buf.shape[2]
    thr = np.float32(prm[P_SOLAR])
    flip = prm[P_FLIP] != 0.0
    for c in range(3):
        scale = np.float32(1.0 / (255.0 * prm[P_STD + c]))
        shift = np.float32(prm[P_MEAN + c] / prm[P_STD + c])
        for y in range(H):
            line = buf[c, y]
            dst = out[c, y]
            for x in range(W):
                v = line[x]
                if thr >= 0.0 and v >= thr:
                    v = np.float32(255.0) - v
                xs = W - 1 - x if flip else x
                dst[xs] = v * scale - shift


@njit(cache=True, fastmath=True)
def make_view(src, prm, out, buf, tmp, rows):
    resize_into(src, int(prm[P_Y]), int(prm[P_X]), int(prm[P_H]), int(prm[P_W]), buf, rows)
    if prm[P_JITTER] != 0.0:
        jitter(buf, prm)
    if prm[P_GRAY] != 0.0:
        grayscale(buf)
    if prm[P_KEEP] >= 0.0:
        channel_drop(buf, prm)
    if prm[P_SIGMA] > 0.0 and prm[P_RADIUS] > 0:
        blur(buf, tmp, prm[P_SIGMA], int(prm[P_RADIUS]))
    finish(buf, prm, out)


@njit(cache=True, parallel=True)
def render_batch(flat, offsets, shapes, params, owners, out, nchunks):
    """Views ``out[i]`` of image ``owners[i]`` by ``params[i]``; ``nchunks`` parallel chunks,
    each with its own scratch."""
    n = params.shape[0]
    S = out.shape[2]
    wmax = 1
    for i in range(n):
        wmax = max(wmax, int(params[i, P_W]))
    for ch in prange(nchunks):
        buf = np.empty((3, S, S), np.float32)
        tmp = np.empty((3, S, S), np.float32)
        rows = np.empty((S, 3 * wmax), np.float32)
        for i in range(ch * n // nchunks, (ch + 1) * n // nchunks):
            j = owners[i]
            h, w = shapes[j, 0], shapes[j, 1]
            src = flat[offsets[j]:offsets[j + 1]].reshape((h, w, 3))
            make_view(src, params[i], out[i], buf, tmp, rows)
