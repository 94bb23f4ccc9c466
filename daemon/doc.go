// Package daemon runs one sheep: a core.Node driven by real adapters:
// peer messages from the TCP transport (package net), disk completions
// from the object store (package disk), ticks from a timer, and requests
// from the front ends (the NBD server and the admin RPC) are queued for the
// node, and one goroutine at a time (holding the node's lock) steps it
// through them in order and carries out each Ready in the order the core
// contract asks: persist the raft records (fsync), then send messages,
// submit disk operations and deliver replies.
//
// Which goroutine that is depends on the load. While at most one client
// request is in flight, the goroutine that queued an event runs the node
// at once ("run to completion"): a replica's network reader steps the
// replication request, journals it and writes the answer itself, and a
// client's request goes out to the replicas from the goroutine that
// received it, with no hand-off to a loop goroutine (a thread wake-up,
// tens of microseconds on a virtual machine, several per replicated
// write). Under load the loop goroutine runs the node instead: events pile
// up while it wakes, and a batch of them shares the system calls of its
// messages and replies. The loop goroutine also ticks the node.
//
// Disk operations run on worker goroutines sharded by object id, so that
// operations on one object complete in the order they were issued while
// different objects proceed in parallel.
package daemon
