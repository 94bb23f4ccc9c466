// Package faults is a Jepsen-style fault harness for real sheepdog
// processes: it starts 3-5 `sheepdog sheep` daemons in a private network
// namespace, breaks their network, processes and disks for real while NBD
// clients write and read, and checks what the clients saw with the
// project's linearizability checker.
//
// # A run
//
// One seed (math/rand/v2 PCG) decides a run's Schedule: the cluster size,
// the copies, the clients, and the faults in order with their hold times
// and target picks. Run creates a namespace sdfaults-<pid>-<n> with its
// loopback up, puts every node on its own loopback address (127.0.0.2,
// 127.0.0.3, ...; peer port 7000, NBD port 10809) with its data directory
// on a tmpfs of its own, formats the cluster and gives every client a VDI
// of its own. Nodes run with a 10 ms tick by default (declared dead after
// 1 s). The namespace, the mounts and every process are removed at the
// end, also on SIGINT and SIGTERM; leftovers of a harness killed with
// SIGKILL are removed by the next run (CleanStale).
//
// Clients run inside the harness process and open their sockets in the
// namespace from a goroutine locked to an OS thread that joined it
// (unix.Setns); the goroutine exits still locked, so that thread is thrown
// away and never runs anything else. A socket stays in the namespace it
// was created in, so the rest of the client is ordinary Go. This was
// chosen over re-executing the harness under `ip netns exec` because the
// clients' history must end up in one process for the check, and
// `go test` then needs no helper mode of the test binary. The daemons and
// the admin CLI are started with `ip netns exec`.
//
// # Faults
//
// Network faults are nftables rules in the namespace's input hook (a
// dropped packet is lost silently, as on a wire; a drop in the output hook
// fails the sender's connect with EPERM at once), on the addresses of the
// nodes and of the clients (each client connects from 127.0.1.x):
// two-way and one-way cuts between two nodes, the raft leader isolated
// (found with `node recovery --json`), the node a client is attached
// through isolated from every node and client, a minority split from the
// majority. Where nftables does not work (or with --net proxy), the same
// links are cut by a fault-injecting TCP proxy (Proxy) in front of every
// node's peer and NBD ports: each node listens on a hidden 127.0.2.x and
// advertises (sheep --advertise) the public 127.0.0.x the proxy listens
// on, and a dropped direction holds its bytes until the heal. Every report
// names the mechanism that ran (nftables or tcp-proxy).
//
// Process faults: kill -9 and restart, SIGSTOP for longer than the failure
// timeout and SIGCONT, SIGTERM and restart. Disk faults: the node's tmpfs
// filled with a filler file (ENOSPC) that is later deleted; bits flipped in
// object files and sidecars of a stopped node; an object file of a stopped
// node deleted; the tail of the newest journal file cut after kill -9; a
// disk replacement (kill -9, data directory emptied, restarted at the same
// address or at a new one).
//
// Faults come one at a time: each is applied, held, healed, and the next
// starts only after the cluster is back to full redundancy (every node a
// serving member of one epoch, recovery finished everywhere), so never more
// than one node is down at once (copies is 2 or 3), and the time that took
// is the fault's heal time. It must stay within Config.HealBound (60 s by
// default), or the run fails.
//
// # Clients and checks
//
// Every client attaches its VDI through one node's NBD port (a small NBD
// client of this package: NBD_OPT_GO, simple replies, several requests in
// flight) and keeps Config.Workers requests going: writes of unique values
// (client id and sequence in every 8 bytes of a 4 KiB block) to a few hot
// blocks in three objects, reads of them, flushes. Every operation is
// recorded with its call and return times and its outcome: ok; failed
// (an NBD error: a write's outcome is then unknown, a read is dropped); or
// unknown (no reply within Config.OpTimeout or the connection died). A
// client whose requests time out, or fail three times in a row, leaves its
// node and attaches through the next one, retrying while the VDI is still
// attached to the old one, as the simulator's clients do.
//
// After the faults every client flushes and reads its hot blocks once
// more, and the run fails if
//
//   - a block's history is not linearizable (linearizability.Check; an
//     unknown write may take effect at any time after its call, or never;
//     a block the search cannot decide in time counts as a failure);
//   - a read was torn, or a block holds a value older than an acknowledged
//     write that a later successful flush covers;
//   - `vdi check` finds an object without all its replicas identical, or
//     repairs something again on a second pass;
//   - the cluster is not back to full redundancy within the bound after a
//     fault or at the end;
//   - a node exited without being told to (a panic's first line is quoted).
//
// A failed run keeps its directory (seed, replay command, schedule, the
// history as JSON, porcupine's HTML visualisation, every node's log and the
// harness's events) and Report.Dir names it.
package faults
