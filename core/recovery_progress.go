package core

// RecoveryBytes reports the bytes of the current epoch's recovery: total
// for every object it fetches and remaining for those still to fetch,
// each counted at its full object size (what a holder sends for it), so
// a deleted object, which carries no data, makes both an upper bound.
// It walks the recovery's objects: for status displays, not for every
// event.
func (n *Node) RecoveryBytes() (total, remaining uint64) {
	r := n.rec
	if r == nil {
		return 0, 0
	}
	for _, oid := range r.order {
		total += uint64(n.objectSize(oid))
	}
	for oid := range r.want {
		remaining += uint64(n.objectSize(oid))
	}
	return total, remaining
}

// RecoveryFetch reports whether the current epoch's recovery is fetching
// oid, and whether other work waits for it (client I/O that made it jump
// the queue). A driver that paces recovery asks it of a DiskPut: it paces
// only recovery's copies (catch-ups and repairs lie on clients' paths),
// and lets a copy that someone waits for go first.
func (n *Node) RecoveryFetch(oid OID) (fetching, awaited bool) {
	r := n.rec
	if r == nil || !r.inflight[oid] {
		return false, false
	}
	return true, len(r.waiters[oid]) > 0
}
