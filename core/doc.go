// Package core is sheepdog's deterministic state machine: consistent-hash
// placement, the raft-replicated cluster log (membership, epochs, VDIs),
// replicated object I/O and recovery.
//
// A Node is driven through Step (one input event), Ready (what to do now)
// and Advance (the driver has done it). It never starts goroutines, reads
// the clock, uses global randomness, does I/O or lets map iteration order
// reach an output: time arrives as ticks, randomness as a seeded *rand.Rand,
// and disk and network as events. The simulator (package sim) and the
// production daemon (package daemon) are two drivers of the same Node.
package core
