// Package linearizability records histories of block I/O and checks them
// for linearizability with porcupine
// (github.com/anishathalye/porcupine).
//
// # Model
//
// Every block is an independent register. Its initial value is 0. A write
// stores a value; a read returns the value currently stored. Because
// operations on different blocks never interact, a history is linearizable
// if and only if the sub-history of every block is; Check therefore splits
// the history by block and runs one porcupine search per block. This keeps
// the search small (its cost grows with the concurrency of a single block,
// not of the whole history) and tells exactly which blocks are wrong.
//
// Every data write should carry a unique non-zero value: uniqueness lets a
// read name the one write it observed, so a read of a value no write
// produced, or of a value that has since been overwritten, is caught. Zero is
// the initial value of every block; writes of zero (a discarded or zeroed
// block) are allowed. Uniqueness is not enforced: duplicate values, zeros
// included, only make the check weaker, never produce a false alarm.
//
// # Recording
//
// A History is filled in by the simulator as operations happen: Invoke when a
// client issues an operation, then exactly one of Complete (it returned
// successfully, with the value read), Fail (it definitely had no effect) or
// Unknown (its outcome cannot be known, e.g. the client timed out or the
// gateway crashed). Times are in any monotone unit, typically simulated
// microseconds.
//
// Failed operations are dropped. An unknown read is dropped too: a read has
// no effect, so leaving it out cannot hide a violation by any other
// operation. An unknown write is indeterminate: it may have taken effect at
// any moment after its invocation, or never. Check models this by giving it a
// return time after every other event of the history, so porcupine may
// linearize it anywhere after its call; a write that never took effect is
// indistinguishable from one linearized after every read of its block. So
// an unknown write whose value no read of its block returned is left out of
// the search altogether (it can always go last), which keeps bursts of
// failed writes from making a block undecidable.
// Operations still open when the history is checked are treated as Unknown.
//
// # Results
//
// porcupine's search is NP-hard in general, so Check bounds the time spent
// on each block. A block whose search does not finish in time is reported in
// Result.TimedOut and counts as a failure, just like a block proven illegal:
// a verdict of "no violation found in time" is not evidence of correctness,
// and silently passing such runs would let a seed that provokes a bug go
// green whenever the machine is slow. A time-out is fixed by making the
// simulated workload less concurrent per block or by raising the timeout,
// never by ignoring it.
//
// Result.Visualize writes porcupine's interactive HTML view of the failing
// blocks (or, for a linearizable result, of every block), which shows the
// longest partial linearizations and the operation that could not be added.
package linearizability
