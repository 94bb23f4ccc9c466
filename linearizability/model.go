package linearizability

import (
	"fmt"
	"strings"

	"github.com/anishathalye/porcupine"
)

// input is the porcupine input of one operation.
type input struct {
	block         uint64
	kind          Kind
	value         uint64 // value written (writes only)
	state         any    // value boxed once, returned by step to avoid an allocation per step
	indeterminate bool   // a write whose outcome is unknown
}

// metadata is the porcupine metadata of one operation, shown in the
// visualisation's tooltips.
type metadata struct {
	block         uint64
	note          string
	indeterminate bool
}

// stateZero is the boxed initial value of every block.
var stateZero any = uint64(0)

// step is the sequential specification of one block: a register.
func step(state, in, out any) (bool, any) {
	op := in.(input)
	if op.kind == Write {
		return true, op.state
	}
	return out.(uint64) == state.(uint64), state
}

// hashState spreads register values over 64 bits (porcupine XORs the state
// hash with the hash of the set of linearized operations).
func hashState(state any) uint64 {
	return state.(uint64) * 0x9e3779b97f4a7c15
}

func equalState(a, b any) bool {
	return a.(uint64) == b.(uint64)
}

func describeOperation(in, out any) string {
	op := in.(input)
	switch {
	case op.kind == Write && op.indeterminate:
		return fmt.Sprintf("w? %#x", op.value)
	case op.kind == Write:
		return fmt.Sprintf("w %#x", op.value)
	default:
		return fmt.Sprintf("r -> %#x", out.(uint64))
	}
}

func describeState(state any) string {
	return fmt.Sprintf("%#x", state.(uint64))
}

func describeMetadata(m any) string {
	md, ok := m.(metadata)
	if !ok {
		return ""
	}
	parts := []string{fmt.Sprintf("block %d", md.block)}
	if md.indeterminate {
		parts = append(parts, "outcome unknown")
	}
	if md.note != "" {
		parts = append(parts, md.note)
	}
	return strings.Join(parts, "; ")
}

// partitionByBlock splits a multi-block history into one partition per
// block, in order of first appearance. Check does its own partitioning; this
// is used to visualise several blocks at once.
func partitionByBlock(history []porcupine.Operation) [][]porcupine.Operation {
	index := make(map[uint64]int)
	var parts [][]porcupine.Operation
	for _, op := range history {
		b := op.Input.(input).block
		i, ok := index[b]
		if !ok {
			i = len(parts)
			index[b] = i
			parts = append(parts, nil)
		}
		parts[i] = append(parts[i], op)
	}
	return parts
}

// blockModel checks the history of a single block.
var blockModel = porcupine.Model{
	Init:                      func() any { return stateZero },
	Step:                      step,
	Equal:                     equalState,
	Hash:                      hashState,
	DescribeOperation:         describeOperation,
	DescribeState:             describeState,
	DescribeOperationMetadata: describeMetadata,
}

// multiModel is blockModel for histories spanning several blocks.
var multiModel = func() porcupine.Model {
	m := blockModel
	m.Partition = partitionByBlock
	return m
}()
