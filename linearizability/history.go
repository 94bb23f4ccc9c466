package linearizability

import (
	"fmt"
	"math"
)

// Kind is the kind of a block operation.
type Kind uint8

const (
	// Read returns the current value of a block.
	Read Kind = iota
	// Write stores a new value in a block.
	Write
)

// String returns "read" or "write".
func (k Kind) String() string {
	switch k {
	case Read:
		return "read"
	case Write:
		return "write"
	default:
		return fmt.Sprintf("Kind(%d)", uint8(k))
	}
}

// Pending is the Return time of an operation whose outcome is unknown: an
// indeterminate write, or an operation that was still open when the history
// was read. Every recorded time must be smaller than Pending-1, so that Check
// can place indeterminate writes after every recorded event.
const Pending int64 = math.MaxInt64

// OpID identifies an operation within the History that returned it.
type OpID int

// Op is one operation on one block, as recorded.
type Op struct {
	Client int    // client id (visualisation row), >= 0
	Block  uint64 // register key
	Kind   Kind
	Value  uint64 // value written (Write) or value read (Read, set on completion)
	Call   int64  // invocation time (any monotone unit, e.g. simulated microseconds)
	Return int64  // completion time; Pending if the outcome is unknown
	Note   string // free text shown in the visualisation (e.g. "gw=3 epoch=7")
}

// opState is the life-cycle state of a recorded operation.
type opState uint8

const (
	stateOpen    opState = iota // invoked, not yet resolved
	stateDone                   // completed successfully
	stateFailed                 // definitely had no effect
	stateUnknown                // outcome unknown
)

// History is a record of block operations, filled in as they happen.
//
// A History is not safe for concurrent use; the deterministic simulator
// that records it runs on one goroutine. Methods panic on misuse (an OpID
// not returned by Invoke on this History, resolving an operation twice,
// times out of range, a write of 0): these are bugs in the recorder, not
// in the system under test.
type History struct {
	ops   []Op
	state []opState
}

// NewHistory returns an empty History.
func NewHistory() *History {
	return &History{}
}

// Invoke records the invocation of an operation by client on block at time
// at and returns its id. For a write, value is the value written; it must be
// non-zero and should be unique across the history. For a read, value is
// ignored (the value read is given to Complete).
func (h *History) Invoke(client int, block uint64, kind Kind, value uint64, at int64, note string) OpID {
	if client < 0 {
		panic(fmt.Sprintf("linearizability: Invoke: negative client id %d", client))
	}
	if at >= Pending-1 {
		panic(fmt.Sprintf("linearizability: Invoke: time %d out of range", at))
	}
	switch kind {
	case Read:
		value = 0
	case Write:
		// Writing 0 (zeroing or discarding a block) is allowed: it
		// repeats the initial value, which only weakens the check.
	default:
		panic(fmt.Sprintf("linearizability: Invoke: invalid kind %v", kind))
	}
	h.ops = append(h.ops, Op{
		Client: client,
		Block:  block,
		Kind:   kind,
		Value:  value,
		Call:   at,
		Return: Pending,
		Note:   note,
	})
	h.state = append(h.state, stateOpen)
	return OpID(len(h.ops) - 1)
}

// open returns the index of the still-open operation id, panicking with a
// message naming method if there is none.
func (h *History) open(id OpID, method string) int {
	i := int(id)
	if i < 0 || i >= len(h.ops) {
		panic(fmt.Sprintf("linearizability: %s: unknown op id %d", method, id))
	}
	if h.state[i] != stateOpen {
		panic(fmt.Sprintf("linearizability: %s: op %d already resolved", method, id))
	}
	return i
}

// Complete records that operation id returned successfully at time at. For
// a read, readValue is the value it returned; for a write it is ignored.
func (h *History) Complete(id OpID, readValue uint64, at int64) {
	i := h.open(id, "Complete")
	op := &h.ops[i]
	if at < op.Call || at >= Pending-1 {
		panic(fmt.Sprintf("linearizability: Complete: op %d returns at %d, called at %d", id, at, op.Call))
	}
	if op.Kind == Read {
		op.Value = readValue
	}
	op.Return = at
	h.state[i] = stateDone
}

// Fail records that operation id definitely had no effect. It is dropped
// from the history.
func (h *History) Fail(id OpID) {
	i := h.open(id, "Fail")
	h.state[i] = stateFailed
}

// Unknown records that the outcome of operation id is unknown. A write may
// take effect at any point after its call, or never; a read is dropped,
// since it has no effect.
func (h *History) Unknown(id OpID) {
	i := h.open(id, "Unknown")
	h.state[i] = stateUnknown
}

// kept reports whether operation i belongs in the checked history.
func (h *History) kept(i int) bool {
	switch h.state[i] {
	case stateDone:
		return true
	case stateOpen, stateUnknown:
		return h.ops[i].Kind == Write
	default:
		return false
	}
}

// Ops returns the operations that are checked, in invocation order: the
// completed ones and the writes whose outcome is unknown (Return ==
// Pending). Operations still open are treated as Unknown. The slice is a
// copy; the caller may modify it.
func (h *History) Ops() []Op {
	out := make([]Op, 0, len(h.ops))
	for i := range h.ops {
		if h.kept(i) {
			op := h.ops[i]
			if h.state[i] != stateDone {
				op.Return = Pending
			}
			out = append(out, op)
		}
	}
	return out
}

// Len returns the number of operations Ops would return.
func (h *History) Len() int {
	n := 0
	for i := range h.ops {
		if h.kept(i) {
			n++
		}
	}
	return n
}
