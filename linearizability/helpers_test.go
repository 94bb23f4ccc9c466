package linearizability

import (
	"cmp"
	"math/rand/v2"
	"slices"
)

// fate is how a test operation ends.
type fate uint8

const (
	done    fate = iota // Complete
	failed              // Fail
	unknown             // Unknown
	open                // never resolved
)

// top is a test operation: what a client did and how it ended. For a read,
// value is the value returned (if done).
type top struct {
	client int
	block  uint64
	kind   Kind
	value  uint64
	call   int64
	ret    int64 // ignored unless done
	fate   fate
	note   string
}

// w and r build done writes and reads on block 1 by client 0; modify the
// result for anything else.
func w(value uint64, call, ret int64) top {
	return top{block: 1, kind: Write, value: value, call: call, ret: ret}
}

func r(value uint64, call, ret int64) top {
	return top{block: 1, kind: Read, value: value, call: call, ret: ret}
}

// on returns op moved to client c and block b.
func (op top) on(c int, b uint64) top {
	op.client, op.block = c, b
	return op
}

// with returns op with the given fate.
func (op top) with(f fate) top {
	op.fate = f
	return op
}

// record invokes ops in call order (stable), then resolves them.
func record(ops []top) *History {
	order := make([]int, len(ops))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(ops[a].call, ops[b].call) })
	h := NewHistory()
	ids := make([]OpID, len(ops))
	for _, i := range order {
		op := ops[i]
		ids[i] = h.Invoke(op.client, op.block, op.kind, op.value, op.call, op.note)
	}
	for i, op := range ops {
		switch op.fate {
		case done:
			h.Complete(ids[i], op.value, op.ret)
		case failed:
			h.Fail(ids[i])
		case unknown:
			h.Unknown(ids[i])
		}
	}
	return h
}

// genConfig shapes a synthetic history.
type genConfig struct {
	ops         int     // operations
	blocks      int     // distinct blocks
	hot         int     // the first hot blocks receive hotFrac of the operations
	hotFrac     float64 //
	clients     int     // concurrent clients, one operation outstanding each
	unknownFrac float64 // fraction of operations with unknown outcome
	failFrac    float64 // fraction of operations that fail
}

// benchConfig is the shape of BenchmarkCheck: ~4,000 ops over 100 blocks,
// heavy overlap on 10 hot blocks.
var benchConfig = genConfig{
	ops:         4000,
	blocks:      100,
	hot:         10,
	hotFrac:     0.6,
	clients:     64,
	unknownFrac: 0.01,
	failFrac:    0.02,
}

// genOps simulates clients doing I/O on an atomic block store: every
// operation takes effect at a random instant within [call, ret], so the
// result is linearizable. Unknown writes take effect with probability 1/2;
// failed operations have no effect.
func genOps(seed uint64, cfg genConfig) []top {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	clock := make([]int64, cfg.clients)
	ops := make([]top, cfg.ops)
	lin := make([]int64, cfg.ops) // linearization point; -1: no effect
	nextValue := uint64(1)
	for i := range ops {
		c := rng.IntN(cfg.clients)
		var b uint64
		if rng.Float64() < cfg.hotFrac {
			b = uint64(rng.IntN(cfg.hot))
		} else {
			b = uint64(cfg.hot + rng.IntN(cfg.blocks-cfg.hot))
		}
		call := clock[c] + rng.Int64N(5)
		lp := call + rng.Int64N(200)
		ret := lp + rng.Int64N(200)
		clock[c] = ret + 1
		op := top{client: c, block: b, kind: Read, call: call, ret: ret}
		if rng.IntN(2) == 0 {
			op.kind = Write
			op.value = nextValue
			nextValue++
		}
		lin[i] = lp
		switch x := rng.Float64(); {
		case x < cfg.unknownFrac:
			op.fate = unknown
			if op.kind == Read || rng.IntN(2) == 0 {
				lin[i] = -1
			}
		case x < cfg.unknownFrac+cfg.failFrac:
			op.fate = failed
			lin[i] = -1
		}
		ops[i] = op
	}
	// Apply the effects in linearization order to compute what reads saw.
	order := make([]int, 0, len(ops))
	for i := range ops {
		if lin[i] >= 0 {
			order = append(order, i)
		}
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(lin[a], lin[b]) })
	reg := make(map[uint64]uint64)
	for _, i := range order {
		if ops[i].kind == Write {
			reg[ops[i].block] = ops[i].value
		} else {
			ops[i].value = reg[ops[i].block]
		}
	}
	return ops
}
