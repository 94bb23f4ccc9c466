package linearizability

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anishathalye/porcupine"
)

// Result is the verdict of Check.
type Result struct {
	OK       bool     // every block linearizable, none timed out
	Blocks   int      // blocks checked
	Ops      int      // operations checked
	Illegal  []uint64 // blocks proven not linearizable, sorted; nil if none
	TimedOut []uint64 // blocks not decided in time, sorted; nil if none; these count as failure

	parts   []blockHistory // every block's history, sorted by block
	timeout time.Duration  // per-block timeout Check used, reused by Visualize
}

// blockHistory is the porcupine history of one block and its verdict.
type blockHistory struct {
	block   uint64
	ops     []porcupine.Operation
	verdict porcupine.CheckResult
}

// Check checks every block of h for linearizability. Each block is searched
// separately (in parallel, up to GOMAXPROCS at a time) with its own time
// limit of timeout; timeout <= 0 means no limit. A block whose search does
// not finish within timeout is reported in TimedOut and makes the result
// not OK.
//
// Check does not modify h and h may be recorded into further afterwards;
// operations still open are treated as Unknown.
func Check(h *History, timeout time.Duration) Result {
	if timeout < 0 {
		timeout = 0
	}
	ops := h.Ops()
	parts := partition(ops)
	res := Result{
		Blocks:  len(parts),
		Ops:     len(ops),
		parts:   parts,
		timeout: timeout,
	}

	// Largest blocks first, so that one big block does not start last.
	order := make([]int, len(parts))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		return cmp.Compare(len(parts[b].ops), len(parts[a].ops))
	})
	workers := min(runtime.GOMAXPROCS(0), len(parts))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				n := int(next.Add(1) - 1)
				if n >= len(order) {
					return
				}
				p := &parts[order[n]]
				p.verdict = porcupine.CheckOperationsTimeout(blockModel, p.ops, timeout)
			}
		})
	}
	wg.Wait()

	for _, p := range parts {
		switch p.verdict {
		case porcupine.Ok:
		case porcupine.Illegal:
			res.Illegal = append(res.Illegal, p.block)
		default:
			res.TimedOut = append(res.TimedOut, p.block)
		}
	}
	res.OK = res.Illegal == nil && res.TimedOut == nil
	return res
}

// partition converts ops to porcupine operations grouped by block, sorted by
// block. Indeterminate writes return one tick after the last recorded event,
// so that they may be linearized anywhere after their call.
//
// An indeterminate write whose value no read of its block returned is left
// out: it can always be linearized last, after every other operation,
// where it changes nothing any operation saw, so the block is linearizable
// with it exactly when it is without it. Each such write would otherwise
// double the orders porcupine may have to try (a burst of failed writes,
// as a failing disk causes, made blocks time out).
func partition(ops []Op) []blockHistory {
	var last int64 = -1 << 63
	type blockValue struct{ block, value uint64 }
	read := make(map[blockValue]bool)
	for _, op := range ops {
		last = max(last, op.Call)
		if op.Return != Pending {
			last = max(last, op.Return)
		}
		if op.Kind == Read && op.Return != Pending {
			read[blockValue{op.Block, op.Value}] = true
		}
	}
	horizon := last + 1

	index := make(map[uint64]int)
	var parts []blockHistory
	for _, op := range ops {
		i, ok := index[op.Block]
		if !ok {
			i = len(parts)
			index[op.Block] = i
			parts = append(parts, blockHistory{block: op.Block})
		}
		indeterminate := op.Return == Pending
		if indeterminate && op.Kind == Write && !read[blockValue{op.Block, op.Value}] {
			continue
		}
		ret := op.Return
		if indeterminate {
			ret = horizon
		}
		in := input{block: op.Block, kind: op.Kind, indeterminate: indeterminate}
		var out any
		if op.Kind == Write {
			in.value = op.Value
			in.state = op.Value
		} else {
			out = op.Value
		}
		parts[i].ops = append(parts[i].ops, porcupine.Operation{
			ClientId: op.Client,
			Input:    in,
			Call:     op.Call,
			Output:   out,
			Return:   ret,
			Metadata: metadata{block: op.Block, note: op.Note, indeterminate: indeterminate},
		})
	}
	slices.SortFunc(parts, func(a, b blockHistory) int { return cmp.Compare(a.block, b.block) })
	return parts
}

// String summarises the result on one line.
func (r Result) String() string {
	if r.OK {
		return fmt.Sprintf("linearizable: %d blocks, %d ops", r.Blocks, r.Ops)
	}
	return fmt.Sprintf("NOT linearizable: blocks %v illegal, %v timed out (of %d blocks, %d ops)",
		r.Illegal, r.TimedOut, r.Blocks, r.Ops)
}

// Visualize writes porcupine's HTML visualisation of r to w. If r is OK it
// shows every block; otherwise only the illegal and timed-out blocks, so
// that the page stays usable for large histories. The blocks are searched
// again (with the timeout Check used) to compute their partial
// linearizations.
func (r Result) Visualize(w io.Writer) error {
	if r.OK {
		return r.visualize(w, r.parts)
	}
	var failing []blockHistory
	for _, p := range r.parts {
		if p.verdict != porcupine.Ok {
			failing = append(failing, p)
		}
	}
	return r.visualize(w, failing)
}

// VisualizeBlocks is like Visualize but shows exactly the given blocks. It
// returns an error if a block has no operations in the checked history.
func (r Result) VisualizeBlocks(w io.Writer, blocks ...uint64) error {
	var sel []blockHistory
	for _, b := range blocks {
		i, ok := slices.BinarySearchFunc(r.parts, b, func(p blockHistory, b uint64) int {
			return cmp.Compare(p.block, b)
		})
		if !ok {
			return fmt.Errorf("linearizability: visualize: block %d has no operations", b)
		}
		sel = append(sel, r.parts[i])
	}
	slices.SortFunc(sel, func(a, b blockHistory) int { return cmp.Compare(a.block, b.block) })
	sel = slices.CompactFunc(sel, func(a, b blockHistory) bool { return a.block == b.block })
	return r.visualize(w, sel)
}

func (r Result) visualize(w io.Writer, parts []blockHistory) error {
	var ops []porcupine.Operation
	var notes []porcupine.Annotation
	for _, p := range parts {
		ops = append(ops, p.ops...)
		if p.verdict == porcupine.Ok || len(p.ops) == 0 {
			continue
		}
		// A row per failing block spanning its operations, so that blocks
		// can be told apart on a page showing several.
		start, end := p.ops[0].Call, p.ops[0].Return
		for _, op := range p.ops {
			start = min(start, op.Call)
			end = max(end, op.Return)
		}
		what := "illegal"
		if p.verdict != porcupine.Illegal {
			what = "timed out"
		}
		notes = append(notes, porcupine.Annotation{
			Tag:             fmt.Sprintf("block %d", p.block),
			Start:           start,
			End:             end,
			Description:     what,
			Details:         fmt.Sprintf("block %d: %s (%d ops)", p.block, what, len(p.ops)),
			BackgroundColor: "#f4b6b6",
		})
	}
	_, info := porcupine.CheckOperationsVerbose(multiModel, ops, r.timeout)
	info.AddAnnotations(notes)
	if err := porcupine.Visualize(multiModel, info, w); err != nil {
		return fmt.Errorf("linearizability: visualize: %w", err)
	}
	return nil
}

// WriteHTML writes Visualize's output to the file at path, creating or
// truncating it.
func (r Result) WriteHTML(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("linearizability: write html: %w", err)
	}
	err = r.Visualize(f)
	if cerr := f.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("linearizability: write html: %w", cerr))
	}
	return err
}
