// Package daemon runs one sheep: a core.Node driven by real adapters. One
// goroutine owns the node and feeds it events: peer messages from the TCP
// transport (package net), disk completions from the object store (package
// disk), ticks from a timer, and requests from the front ends (the NBD
// server and the admin RPC). It carries out each Ready in the order the
// core contract asks: persist the raft records (fsync), then send
// messages, submit disk operations and deliver replies.
//
// Disk operations run on worker goroutines sharded by object id, so that
// operations on one object complete in the order they were issued while
// different objects proceed in parallel.
package daemon
