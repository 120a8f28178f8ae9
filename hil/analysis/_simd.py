"""AVX-512 building blocks for the analysis kernels, written as numba intrinsics in LLVM IR.

The full-rate kernels (gated pulse assignment, sync extraction) keep a compacted output: one row
per detector tag, skipping the sync tags interleaved at random. A scalar loop pays a store and
a dependent index update per tag for that; AVX-512 does it for 8 tags with one compress
instruction (VPCOMPRESSQ/VPCOMPRESSB, Intel SDM vol. 2). LLVM does not vectorise such loops by
itself, so the blocks below spell the vector code out. Each block is a drop-in for a run of
iterations of a scalar kernel in _kernels.py and gives the same bits: the same integer
operations, the same IEEE double operations in the same order (no fused multiply-add, no
reassociation), and tests compare the two on random and edge-case inputs.

``AVAILABLE`` tells whether this CPU has the instructions (AVX-512 F, VL, BW, DQ and VBMI2:
Ice Lake and later Intel cores, AMD Zen 4 and later); without them (or with HIL_NO_SIMD=1)
the callers use the scalar kernels, and nothing here is compiled.

Editing this file: numba's cache of the kernels that use these blocks does not notice the
change (it watches the kernel's own file); delete hil/analysis/__pycache__/*.nb* as well.
"""

from __future__ import annotations

import os

from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic

_NEEDED = ("avx512f", "avx512vl", "avx512bw", "avx512dq", "avx512vbmi2")


def _host_has_avx512() -> bool:
    """True when numba compiles for this CPU and it has the instructions. With NUMBA_CPU_NAME
    or NUMBA_CPU_FEATURES set (code built for another CPU, e.g. a portable cache) the
    instructions may be missing there; HIL_NO_SIMD=1 turns the vector kernels off."""
    if os.environ.get("HIL_NO_SIMD", "") not in ("", "0"):
        return False
    if config.CPU_NAME not in (None, "host") or config.CPU_FEATURES:
        return False
    try:
        features = llvm.get_host_cpu_features()
    except RuntimeError:  # no feature list on this platform
        return False
    return all(features.get(f, False) for f in _NEEDED)


AVAILABLE = _host_has_avx512()

_I1, _I8, _I32, _I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
_F64 = ir.DoubleType()
_V8I = ir.VectorType(_I64, 8)
_V8F = ir.VectorType(_F64, 8)
_V8B = ir.VectorType(_I8, 8)
_V16B = ir.VectorType(_I8, 16)
_V8M = ir.VectorType(_I1, 8)
_INT64_MAX = (1 << 63) - 1
BLOCK = 16  # tags per extract_block and sift_block call
ASSIGN_BLOCK = 32  # tags per assign_block call


def _const(vt: ir.VectorType, value) -> ir.Constant:
    return ir.Constant(vt, [value] * vt.count)


def _splat(builder: ir.IRBuilder, value: ir.Value, lanes: int = 8) -> ir.Value:
    """A vector of ``lanes`` lanes holding ``value`` in every lane."""
    vt = ir.VectorType(value.type, lanes)
    v = builder.insert_element(ir.Constant(vt, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(
        v, ir.Constant(vt, ir.Undefined), _const(ir.VectorType(_I32, lanes), 0)
    )


def _lane(builder: ir.IRBuilder, vec: ir.Value, q: int) -> ir.Value:
    """An 8-lane vector holding lane q of ``vec`` in every lane (one broadcast)."""
    mask = _const(ir.VectorType(_I32, 8), q)
    return builder.shuffle_vector(vec, ir.Constant(vec.type, ir.Undefined), mask)


def _load(builder: ir.IRBuilder, ptr: ir.Value, vt: ir.VectorType, align: int = 1) -> ir.Value:
    return builder.load(builder.bitcast(ptr, vt.as_pointer()), align=align)


def _store(builder: ir.IRBuilder, value: ir.Value, ptr: ir.Value) -> None:
    builder.store(value, builder.bitcast(ptr, value.type.as_pointer()), align=1)


def _call(builder: ir.IRBuilder, name: str, ret: ir.Type, args: list) -> ir.Value:
    fnty = ir.FunctionType(ret, [a.type for a in args])
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), args)


def _permute(builder: ir.IRBuilder, table: ir.Value, index: ir.Value) -> ir.Value:
    """Lane l of the result = table[index[l] mod 8] (VPERMQ / VPERMPD)."""
    name = (
        "llvm.x86.avx512.permvar.df.512" if table.type == _V8F else "llvm.x86.avx512.permvar.di.512"
    )
    return _call(builder, name, table.type, [table, index])


def _compress_store(builder, values: ir.Value, mask: ir.Value, ptr: ir.Value) -> None:
    """Store the lanes of ``values`` selected by ``mask`` packed at ``ptr``, then garbage up to
    the vector's width: compress into a register and store the whole register (a compress
    straight to memory is several times slower on Intel cores). The caller leaves room."""
    if values.type == _V8I:
        packed = _call(
            builder, "llvm.x86.avx512.mask.compress.v8i64", _V8I, [values, _const(_V8I, 0), mask]
        )
        _store(builder, packed, ptr)
        return
    # bytes: VPCOMPRESSB works on 16 lanes; the upper 8 are masked off
    widen = ir.Constant(ir.VectorType(_I32, 16), list(range(8)) + [8] * 8)
    v16 = builder.shuffle_vector(values, ir.Constant(_V8B, ir.Undefined), widen)
    m16 = builder.shuffle_vector(mask, _const(_V8M, 0), widen)
    packed = _call(
        builder, "llvm.x86.avx512.mask.compress.v16i8", _V16B, [v16, _const(_V16B, 0), m16]
    )
    low = ir.Constant(ir.VectorType(_I32, 8), list(range(8)))
    _store(builder, builder.shuffle_vector(packed, ir.Constant(_V16B, ir.Undefined), low), ptr)


@intrinsic
def assign_block(
    typingctx, ts, ch, i0, pulse, det_ch, j, rows_ps, rows_pulse, period, k, last, search, luts, hg
):
    """Gated pulse assignment of the ASSIGN_BLOCK tags ts[i0:i0 + 32], as
    _kernels.assign_pulses_gated
    does it one tag at a time, when their intervals lie within k .. k + 7 (k: the interval of
    the block's first tag; interval q holds raw - search < rows_ps[q + 1], the last interval
    ``last`` everything after). Writes the detector tags' pulse indices and channels at
    pulse[j:], det_ch[j:] (and garbage up to 7 entries beyond: the caller leaves room).

    ``luts`` is an int64 array of 16: delays by channel 0..7, then 1 for a detector channel
    (channels 8 and up: delay 0, not a detector). Returns n_written | o << 8 | miss << 16:
    o = interval of the last tag - k, miss = the tags whose residual lies outside the gate
    (one bit each, any channel), or 1 << 62 (nothing written) when the block reaches past
    interval k + 7.
    """
    sig = types.int64(
        ts, ch, i0, pulse, det_ch, j, rows_ps, rows_pulse, period, k, last, search, luts, hg
    )

    def codegen(context, builder, signature, args):
        def data(q):
            return context.make_array(signature.args[q])(context, builder, args[q]).data

        p_ts, p_ch, p_pulse, p_det = data(0), data(1), data(3), data(4)
        p_rows, p_rpulse, p_period, p_luts = data(6), data(7), data(8), data(12)
        i0v, jv, kv, lastv, searchv, hgv = args[2], args[5], args[9], args[10], args[11], args[13]

        def window(ptr, vt, offset=0):
            return _load(
                builder, builder.gep(ptr, [builder.add(kv, ir.Constant(_I64, offset))]), vt
            )

        # the 8 intervals from k: start, pulse, period, reciprocal period (divided here as the
        # scalar kernel does, 1.0 / period), and where each ends (the last one never ends)
        base_w = window(p_rows, _V8I)
        pulse_w = window(p_rpulse, _V8I)
        period_w = window(p_period, _V8F)
        inv_w = builder.fdiv(_const(_V8F, 1.0), period_w)
        more = builder.icmp_signed(
            "<", ir.Constant(_V8I, list(range(8))), _splat(builder, builder.sub(lastv, kv))
        )
        end_w = builder.select(
            more,
            builder.add(window(p_rows, _V8I, 1), _splat(builder, searchv)),
            _const(_V8I, _INT64_MAX),
        )
        delay_lut = _load(builder, p_luts, _V8I)
        det_lut = _load(builder, builder.gep(p_luts, [ir.Constant(_I64, 8)]), _V8I)
        hg_v = _splat(builder, hgv)
        neg_hg = builder.fneg(hg_v)

        halves = []
        for h in range(ASSIGN_BLOCK // 8):
            off = builder.add(i0v, ir.Constant(_I64, 8 * h))
            raw = _load(builder, builder.gep(p_ts, [off]), _V8I)
            c8 = _load(builder, builder.gep(p_ch, [off]), _V8B)
            c = builder.zext(c8, _V8I)
            # interval offset o = number of the first 7 interval ends at or before raw
            o = _const(_V8I, 0)
            for q in range(7):
                o = builder.sub(
                    o, builder.sext(builder.icmp_signed(">=", raw, _lane(builder, end_w, q)), _V8I)
                )
            small = builder.icmp_unsigned("<", c, _const(_V8I, 8))
            c7 = builder.and_(c, _const(_V8I, 7))
            delay = builder.select(small, _permute(builder, delay_lut, c7), _const(_V8I, 0))
            is_det = builder.and_(
                small, builder.icmp_signed("!=", _permute(builder, det_lut, c7), _const(_V8I, 0))
            )
            # as the scalar kernel: dt = double(raw - delay - base) (exact integers),
            # step = floor(dt * inv + 0.5), r = dt - step * period, inside = -hg <= r < hg
            base = _permute(builder, base_w, o)
            dt = builder.sitofp(builder.sub(builder.sub(raw, delay), base), _V8F)
            x = builder.fadd(builder.fmul(dt, _permute(builder, inv_w, o)), _const(_V8F, 0.5))
            step = _call(builder, "llvm.floor.v8f64", _V8F, [x])
            r = builder.fsub(dt, builder.fmul(step, _permute(builder, period_w, o)))
            inside = builder.and_(
                builder.fcmp_ordered(">=", r, neg_hg), builder.fcmp_ordered("<", r, hg_v)
            )
            value = builder.add(_permute(builder, pulse_w, o), builder.fptosi(step, _V8I))
            value = builder.select(inside, value, _const(_V8I, -1))
            halves.append((raw, o, c8, is_det, inside, value))

        raw_last = builder.extract_element(halves[-1][0], ir.Constant(_I32, 7))
        beyond = builder.icmp_signed(
            ">=", raw_last, builder.extract_element(end_w, ir.Constant(_I32, 7))
        )
        entry = builder.block
        write = builder.append_basic_block("write")
        done = builder.append_basic_block("done")
        builder.cbranch(beyond, done, write)
        builder.position_at_end(write)
        jj = jv
        miss = ir.Constant(_I64, 0)
        for h, (_, _, c8, is_det, inside, value) in enumerate(halves):
            _compress_store(builder, value, is_det, builder.gep(p_pulse, [jj]))
            _compress_store(builder, c8, is_det, builder.gep(p_det, [jj]))
            count = _call(builder, "llvm.ctpop.i8", _I8, [builder.bitcast(is_det, _I8)])
            jj = builder.add(jj, builder.zext(count, _I64))
            lanes_out = builder.zext(builder.bitcast(builder.not_(inside), _I8), _I64)
            miss = builder.or_(miss, builder.shl(lanes_out, ir.Constant(_I64, 16 + 8 * h)))
        o_last = builder.extract_element(halves[-1][1], ir.Constant(_I32, 7))
        result = builder.or_(builder.sub(jj, jv), builder.shl(o_last, ir.Constant(_I64, 8)))
        result = builder.or_(result, miss)
        builder.branch(done)
        builder.position_at_end(done)
        out = builder.phi(_I64)
        out.add_incoming(result, write)
        out.add_incoming(ir.Constant(_I64, 1 << 62), entry)
        return out

    return sig, codegen


_V16I = ir.VectorType(_I64, 16)
_V16M = ir.VectorType(_I1, 16)


NO_BIN = 48  # sift_block's bin for an unassigned row (pulse < 0): counted apart


@intrinsic
def sift_block(typingctx, pulse, channel, basis, intensity, bit, r0, prev, outcome):
    """The outcome bins of rows r0 .. r0 + 15 for _kernels._sift_singles_simd, when each is
    unassigned (pulse < 0) or a plain single click with a valid answer, as the scalar fast
    path decides it: its pulse above every earlier row's (and ``prev``, the last counted
    pulse), the next row's pulse above its own or the next row unassigned, basis 0/1, class
    0..2, bit 0/1/255 and channel 1..4. The bins are 0..47, as _kernels._outcome_tables
    numbers them ([basis * 3 + class, match, disclosed, error]), NO_BIN for an unassigned
    row; the block writes them in pairs, outcome[q] = 49 * bin(r0 + 2q) + bin(r0 + 2q + 1) for
    q = 0..7 (uint16: one histogram increment per two rows), and returns 1 + 2 * (number of
    unassigned rows); otherwise it writes nothing and returns 0 (the scalar path takes these
    rows). Needs rows up to r0 + 16."""
    sig = types.int64(pulse, channel, basis, intensity, bit, r0, prev, outcome)

    def codegen(context, builder, signature, args):
        def data(q):
            return context.make_array(signature.args[q])(context, builder, args[q]).data

        p_pulse, p_chan, p_basis, p_int, p_bit, p_out = (data(q) for q in (0, 1, 2, 3, 4, 7))
        r0, prev = args[5], args[6]
        here = _load(builder, builder.gep(p_pulse, [r0]), _V16I)
        after = _load(builder, builder.gep(p_pulse, [builder.add(r0, ir.Constant(_I64, 1))]), _V16I)
        zero = _const(_V16I, 0)
        assigned = builder.icmp_signed(">=", here, zero)
        # above every earlier row: when all 16 rows are assigned, rising rows above prev;
        # otherwise each row against the highest pulse of the rows before it (and prev), a
        # prefix maximum in four doubling steps (unassigned rows, -1, never raise it, since
        # prev >= -1)
        prev_v = _splat(builder, prev, 16)
        mask16 = ir.IntType(16)
        all_assigned = builder.icmp_unsigned(
            "==", builder.bitcast(assigned, mask16), ir.Constant(mask16, 0xFFFF)
        )
        with builder.if_else(all_assigned) as (dense, sparse):
            with dense:
                block_dense = builder.block
                before_dense = _shift_in(builder, here, prev_v, 1)
            with sparse:
                block_sparse = builder.block
                before = _shift_in(builder, here, prev_v, 1)
                for step in (1, 2, 4, 8):
                    shifted = _shift_in(builder, before, prev_v, step)
                    before = builder.select(
                        builder.icmp_signed(">", before, shifted), before, shifted
                    )
                block_sparse = builder.block
        before_all = builder.phi(_V16I)
        before_all.add_incoming(before_dense, block_dense)
        before_all.add_incoming(before, block_sparse)
        single = builder.and_(
            builder.icmp_signed(">", here, before_all),
            builder.or_(
                builder.icmp_signed(">", after, here), builder.icmp_signed("<", after, zero)
            ),
        )

        def bytes16(ptr):
            return _load(builder, builder.gep(ptr, [r0]), _V16B)

        def c16(v):
            return _const(_V16B, v)

        a_basis, a_class, a_bit = bytes16(p_basis), bytes16(p_int), bytes16(p_bit)
        cc = builder.sub(bytes16(p_chan), c16(1))  # detector 0..3 = 2 * Bob's basis + bit
        valid = builder.and_(
            builder.icmp_unsigned("<=", a_basis, c16(1)),
            builder.icmp_unsigned("<=", a_class, c16(2)),
        )
        bit_ok = builder.or_(
            builder.icmp_unsigned("<=", a_bit, c16(1)), builder.icmp_unsigned("==", a_bit, c16(255))
        )
        valid = builder.and_(builder.and_(valid, bit_ok), builder.icmp_unsigned("<=", cc, c16(3)))
        ok = builder.or_(builder.not_(assigned), builder.and_(single, valid))
        all_ok = builder.icmp_unsigned(
            "==", builder.bitcast(ok, mask16), ir.Constant(mask16, 0xFFFF)
        )

        def flag(cond):  # i1 lanes -> 0/1 bytes
            return builder.zext(cond, _V16B)

        cell = builder.add(builder.mul(a_basis, c16(3)), a_class)
        match = flag(builder.icmp_unsigned("==", builder.lshr(cc, c16(1)), a_basis))
        disclosed = flag(builder.icmp_unsigned("!=", a_bit, c16(255)))
        error = flag(builder.icmp_unsigned("!=", a_bit, builder.and_(cc, c16(1))))
        bins = builder.add(builder.mul(cell, c16(8)), builder.mul(match, c16(4)))
        bins = builder.add(builder.add(bins, builder.mul(disclosed, c16(2))), error)
        bins = builder.select(assigned, bins, c16(NO_BIN))
        v8w = ir.VectorType(ir.IntType(16), 8)
        even = builder.shuffle_vector(
            bins, bins, ir.Constant(ir.VectorType(_I32, 8), list(range(0, 16, 2)))
        )
        odd = builder.shuffle_vector(
            bins, bins, ir.Constant(ir.VectorType(_I32, 8), list(range(1, 16, 2)))
        )
        pairs = builder.add(
            builder.mul(builder.zext(even, v8w), _const(v8w, NO_BIN + 1)), builder.zext(odd, v8w)
        )
        with builder.if_then(all_ok):
            _store(builder, pairs, p_out)
        n_free = _call(
            builder, "llvm.ctpop.i16", mask16, [builder.bitcast(builder.not_(assigned), mask16)]
        )
        result = builder.add(
            ir.Constant(_I64, 1), builder.shl(builder.zext(n_free, _I64), ir.Constant(_I64, 1))
        )
        return builder.select(all_ok, result, ir.Constant(_I64, 0))

    return sig, codegen


def _shift_in(builder: ir.IRBuilder, vec: ir.Value, fill: ir.Value, step: int) -> ir.Value:
    """Lane l of the result = vec[l - step], or fill[l] for l < step (16 lanes)."""
    mask = [16 + q if q < step else q - step for q in range(16)]
    return builder.shuffle_vector(vec, fill, ir.Constant(ir.VectorType(_I32, 16), mask))


@intrinsic
def extract_block(typingctx, ts, ch, i0, out, j, channel):
    """The timestamps of the tags among ts[i0:i0 + 16] on ``channel``, packed at out[j:] (and
    garbage up to 8 entries beyond: the caller leaves room); returns how many."""
    sig = types.int64(ts, ch, i0, out, j, channel)

    def codegen(context, builder, signature, args):
        def data(q):
            return context.make_array(signature.args[q])(context, builder, args[q]).data

        p_ts, p_ch, p_out = data(0), data(1), data(3)
        i0v, jv, chan = args[2], args[4], args[5]
        want = _splat(builder, builder.trunc(chan, _I8))
        jj = jv
        for h in range(2):
            off = builder.add(i0v, ir.Constant(_I64, 8 * h))
            hit = builder.icmp_unsigned("==", _load(builder, builder.gep(p_ch, [off]), _V8B), want)
            _compress_store(
                builder,
                _load(builder, builder.gep(p_ts, [off]), _V8I),
                hit,
                builder.gep(p_out, [jj]),
            )
            count = _call(builder, "llvm.ctpop.i8", _I8, [builder.bitcast(hit, _I8)])
            jj = builder.add(jj, builder.zext(count, _I64))
        return builder.sub(jj, jv)

    return sig, codegen


_V64B = ir.VectorType(_I8, 64)


@intrinsic
def count_block(typingctx, ch, i0, channel):
    """Number of the 64 bytes ch[i0:i0 + 64] equal to ``channel`` (one compare into a mask
    register and a population count)."""
    sig = types.int64(ch, i0, channel)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        block = _load(builder, builder.gep(data, [args[1]]), _V64B)
        want = _splat(builder, builder.trunc(args[2], _I8), 64)
        hits = builder.bitcast(builder.icmp_unsigned("==", block, want), _I64)
        return _call(builder, "llvm.ctpop.i64", _I64, [hits])

    return sig, codegen
