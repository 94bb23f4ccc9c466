// Package sim is sheepdog's deterministic simulator: a discrete-event loop
// on virtual time that drives real core.Node state machines through a
// simulated network, simulated disks, crashes and client workloads, with a
// single seed behind every choice.
//
// Each run has a safety phase, in which faults are injected (crashes and
// restarts that lose unsynced writes, joins, leaves, message loss, delay,
// duplication and reordering, partitions including one-way ones, slow and
// failing disks, silent corruption and clock drift) while clients issue
// overlapping reads, writes, discards and flushes on a few hot blocks; and
// a liveness phase in which every fault heals and the cluster must
// converge. Every run then checks that
//
//   - each block's history is linearizable (porcupine; a check that cannot
//     decide counts as a failure),
//   - every object has exactly its replicas, all identical, after healing,
//   - nothing acknowledged and flushed is lost when every node loses power,
//
// and reports a hash of its whole trace so that the same seed can be shown
// to replay byte for byte.
package sim
