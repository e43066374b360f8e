"""Scale (and min) searches of llama.cpp's K-quants, vectorized over groups.

Each function follows one helper of ggml/src/ggml-quants.c and reproduces its float32 arithmetic
exactly (see :mod:`quantedu.gguf.numerics`). Inputs are element-major, shape ``(n, G)``: ``G`` groups of
``n`` weights. The loops over candidate scales and the coordinate-descent sweeps stay sequential (the C
code updates its state between steps); every step is one vector operation over all groups.

* :func:`make_qx_quants` - symmetric codes ``l in [-nmax, nmax)``; tries 19 scales around ``nmax/max``
  and keeps the weighted least-squares optimum (Q3_K/Q6_K scales, Q4_0/Q5_0 with an imatrix).
* :func:`make_q3_quants` - symmetric codes refined by coordinate descent (Q3_K without imatrix).
* :func:`make_qkx` - asymmetric ``x ~ scale*l + min`` (C's ``make_qkx2_quants``, ``version=2``, and
  ``make_qkx3_quants``, ``version=3``): a grid of ``nstep+1`` trial scales, each followed by a
  closed-form weighted least-squares fit of (scale, min).
* :func:`make_qp_quants` - non-negative codes for the sub-block scales themselves (imatrix paths).
"""
from __future__ import annotations

import numpy as np

from .numerics import _MAGIC, F32, GROUP_MAX_EPS, first_absmax, nearest_int, seqsum, u8


def _err(diff, use_mad):
    return np.abs(diff) if use_mad else diff * diff


def make_qx_quants(x: np.ndarray, nmax: int, qw: np.ndarray | None = None):
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, qw)``.

    Returns ``(scale[G], L[n, G])`` with ``L = l + nmax`` in ``[0, 2*nmax)``. Weights are ``qw`` or,
    without one, ``x*x`` (rmse_type 1). All-zero groups give scale 0 and L 0.
    """
    w = qw if qw is not None else x * x
    amax, mx = first_absmax(x)
    zero = amax < GROUP_MAX_EPS
    wx = w * x  # C: w*x[i]*l == (w*x[i])*l
    lo, hi = F32(-nmax), F32(nmax - 1)
    # |iscale*x| <= nmax + 1 in every live group, so nearest_int is exact float rounding
    # (v + 1.5*2**23) - 1.5*2**23; all-zero groups get iscale 0 and are overwritten at the end.
    safe_mx = np.where(zero, F32(1), mx).astype(F32)
    lf = np.empty_like(x)
    wl = np.empty_like(x)
    tmp = np.empty_like(x)

    def codes(iscale):
        iscale = np.where(zero, F32(0), iscale).astype(F32)
        np.multiply(x, iscale, out=lf)
        np.add(lf, _MAGIC, out=lf)
        np.subtract(lf, _MAGIC, out=lf)
        np.clip(lf, lo, hi, out=lf)
        np.multiply(wx, lf, out=tmp)
        sumlx = seqsum(tmp)
        np.multiply(w, lf, out=wl)
        np.multiply(wl, lf, out=wl)
        return sumlx, seqsum(wl)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        sumlx, suml2 = codes(F32(-nmax) / safe_mx)
        L = lf.copy()
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(F32)
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            sumlx, suml2 = codes(-(F32(nmax) + F32(0.1) * F32(step)) / safe_mx)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            if better.any():
                np.copyto(L, lf, where=better[None, :])
                scale = np.where(better, sumlx / suml2, scale).astype(F32)
                best = np.where(better, scale * sumlx, best).astype(F32)
    L = np.where(zero, 0, L.astype(np.int64) + nmax)
    scale = np.where(zero, F32(0), scale).astype(F32)
    return scale, L


def make_q3_quants(x: np.ndarray, nmax: int):
    """``make_q3_quants(n, nmax, x, L, do_rmse=true)``: weights ``x*x``, then up to 5 sweeps of
    coordinate descent that move one code at a time while ``(sum w x l)^2 / sum w l^2`` grows.

    A group whose sweep changes nothing would change nothing on the next sweep either, so running
    all groups for the same number of sweeps equals the C per-group early exit.
    """
    amax, mx = first_absmax(x)
    zero = amax < GROUP_MAX_EPS
    n = x.shape[0]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(-nmax) / mx
        L = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
        Lf = L.astype(F32)
        w = x * x
        wx = w * x
        sumlx = seqsum(wx * Lf)
        suml2 = seqsum(w * Lf * Lf)
        for _ in range(5):
            changed = False
            for i in range(n):
                li = Lf[i]
                slx = sumlx - wx[i] * li
                sl2 = suml2 - w[i] * li * li
                new_l = np.clip(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1)
                new_f = new_l.astype(F32)
                ok = (slx > 0) & (new_l != L[i])
                slx = slx + wx[i] * new_f
                sl2 = sl2 + w[i] * new_f * new_f
                ok &= (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
                if ok.any():
                    changed = True
                    L[i] = np.where(ok, new_l, L[i])
                    Lf[i] = np.where(ok, new_f, li)
                    sumlx = np.where(ok, slx, sumlx).astype(F32)
                    suml2 = np.where(ok, sl2, suml2).astype(F32)
            if not changed:
                break
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0)).astype(F32)
    return np.where(zero, F32(0), scale).astype(F32), np.where(zero, 0, L + nmax)


def make_qkx(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
             use_mad: bool, version: int = 2):
    """``make_qkx2_quants`` (version 2) / ``make_qkx3_quants`` (version 3).

    Fits ``x ~ scale*L + min`` with ``L in [0, nmax]`` and ``min <= 0``. Starts from the min/max grid,
    then for each trial ``iscale = (rmin + rdelta*is + nmax) / (max - min)`` solves the weighted 2x2
    least-squares problem for (scale, min) and keeps it if the weighted error drops. Note that the
    trial grid uses the *current best* min, exactly as the C loop does.
    Returns ``(scale[G], the_min[G], L[n, G])`` where ``the_min = -min >= 0``.
    """
    xmin = x.min(axis=0)
    xmax = x.max(axis=0)
    w = weights
    sum_w = seqsum(w, start_zero=False)
    sum_x = seqsum(w * x, start_zero=False)
    xmin = np.where(xmin > 0, F32(0), xmin).astype(F32)
    degenerate = (xmax == xmin) if version == 2 else (xmax <= xmin)
    ok = ~degenerate
    hi = F32(nmax)
    # scratch buffers: every step below is one pass over (n, G) floats, written in place
    v = np.empty_like(x)
    la = np.empty_like(x)
    wl = np.empty_like(x)
    tmp = np.empty_like(x)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(nmax) / (xmax - xmin)
        scale = F32(1) / iscale
        L = np.clip(nearest_int(iscale * (x - xmin)), 0, nmax).astype(F32)
        best = seqsum(w * _err(scale * L + xmin - x, use_mad))
        cur_min = xmin
        xm = x - cur_min
        span = np.maximum(np.abs(xmax - cur_min), np.abs(xmin - cur_min))
        for step in range(nstep + 1):
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (xmax - cur_min)
            np.multiply(xm, iscale, out=v)
            if np.all((np.abs(iscale) * span)[ok] < F32(1 << 21)):
                # |v| < 2**22 in every live group: nearest_int is exact float rounding (v + 1.5*2**23) - 1.5*2**23
                np.add(v, _MAGIC, out=la)
                la -= _MAGIC
                np.clip(la, 0, hi, out=la)
            else:  # a near-degenerate group: emulate the C bit trick exactly, garbage included
                la[...] = np.clip(nearest_int(v), 0, nmax)
            np.multiply(w, la, out=wl)
            sum_l = seqsum(wl)
            np.multiply(wl, la, out=tmp)
            sum_l2 = seqsum(tmp)
            np.multiply(wl, x, out=tmp)
            sum_xl = seqsum(tmp)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_min = np.where(pos, F32(0), this_min).astype(F32)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale).astype(F32)
            np.multiply(la, this_scale, out=tmp)
            tmp += this_min
            tmp -= x
            if use_mad:
                np.abs(tmp, out=tmp)
            else:
                tmp *= tmp
            tmp *= w
            cur = seqsum(tmp)
            better = (D > 0) & (cur < best)
            if better.any():
                np.copyto(L, la, where=better[None, :])
                best = np.where(better, cur, best).astype(F32)
                scale = np.where(better, this_scale, scale).astype(F32)
                cur_min = np.where(better, this_min, cur_min).astype(F32)
                np.subtract(x, cur_min, out=xm)
                span = np.maximum(np.abs(xmax - cur_min), np.abs(xmin - cur_min))
    scale = np.where(degenerate, F32(0), scale).astype(F32)
    the_min = (-np.where(degenerate, xmin, cur_min)).astype(F32)
    L = np.where(degenerate, 0, L.astype(np.int64))
    return scale, the_min, L


def make_qp_quants(x: np.ndarray, nmax: int, qw: np.ndarray):
    """``make_qp_quants(n, nmax, x, L, quant_weights)``: non-negative codes ``L in [0, nmax]`` for
    non-negative values (the sub-block scales/mins), weighted by ``qw``. Tries 9 scales, then up to 5
    coordinate-descent sweeps. Returns ``(scale[G], L[n, G])``; codes are ``uint8`` like the C array.
    """
    n = x.shape[0]
    mx = np.maximum(x.max(axis=0), F32(0))
    zero = mx < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(nmax) / mx
        L = u8(nearest_int(iscale * x))
        scale = F32(1) / iscale
        diff = x - scale * L.astype(F32)
        best = seqsum(qw * diff * diff)
        for step in range(-4, 5):
            if step == 0:
                continue
            iscale_is = (F32(0.1) * F32(step) + F32(nmax)) / mx
            scale_is = F32(1) / iscale_is
            l = np.minimum(nmax, nearest_int(iscale_is * x))
            diff = x - scale_is * l.astype(F32)
            mse = seqsum(qw * diff * diff)
            better = mse < best
            best = np.where(better, mse, best).astype(F32)
            iscale = np.where(better, iscale_is, iscale).astype(F32)
        lint = np.minimum(nmax, nearest_int(iscale * x))
        L = u8(lint)
        Lf = L.astype(F32)
        wx = qw * x
        lint = lint.astype(F32)
        sumlx = seqsum(wx * lint)
        suml2 = seqsum(qw * lint * lint)
        for _ in range(5):
            changed = False
            for i in range(n):
                li = Lf[i]
                slx = sumlx - wx[i] * li
                sl2 = suml2 - qw[i] * li * li
                cand = (slx > 0) & (sl2 > 0)
                new_l = np.minimum(nmax, nearest_int(x[i] * sl2 / slx))
                new_f = new_l.astype(F32)
                cand &= new_l != L[i]
                slx = slx + wx[i] * new_f
                sl2 = sl2 + qw[i] * new_f * new_f
                ok = cand & (slx * slx * suml2 > sumlx * sumlx * sl2)
                if ok.any():
                    changed = True
                    L[i] = np.where(ok, u8(new_l), L[i])
                    Lf[i] = L[i].astype(F32)
                    sumlx = np.where(ok, slx, sumlx).astype(F32)
                    suml2 = np.where(ok, sl2, suml2).astype(F32)
            if not changed:
                break
        out = np.where(suml2 > 0, sumlx / suml2, F32(0)).astype(F32)
    return np.where(zero, F32(0), out).astype(F32), np.where(zero, 0, L)
