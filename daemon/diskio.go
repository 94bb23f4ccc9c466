package daemon

import (
	"errors"
	"hash/maphash"
	"sync"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/disk"
)

var oidSeed = maphash.MakeSeed()

// inlineReadMax bounds the reads the goroutine running the node may serve
// itself from the page cache (about 100µs of copying and checksumming).
const inlineReadMax = 1 << 20

// zeros backs writes of zeros; the store only reads it.
var zeros = make([]byte, 4<<20)

func (d *Daemon) startDisk() {
	d.workers = make([]chan core.DiskOp, diskWorkers)
	for i := range d.workers {
		ch := make(chan core.DiskOp, 1024)
		d.workers[i] = ch
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			for op := range ch {
				d.complete(op, d.execDisk(op))
			}
		}()
	}
	d.syncs = make(chan core.DiskOp, 1024)
	for i := 0; i < 4; i++ {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			for op := range d.syncs {
				res := core.DiskDone{ID: op.ID}
				if err := d.store.Sync(); err != nil {
					d.log.Error("sync failed", "err", err)
					res.Err = diskCode(err)
				}
				d.complete(op, res)
			}
		}()
	}
	d.startPacing()
}

func (d *Daemon) stopDisk() {
	d.stopPacing() // it queues on the workers
	for _, ch := range d.workers {
		close(ch)
	}
	close(d.syncs)
	d.wg.Wait()
}

// submitDisk queues op on its object's worker: one object's operations
// run in the order they were issued. A write that need not be durable at
// once only appends to the store's journal buffer, so the goroutine
// running the node does it itself and saves two goroutine hand-offs (the
// core never issues it while another operation on the object is in
// flight) — unless the store is applying backpressure: then the write
// waits on a worker, and the node keeps serving heartbeats, the cluster
// log and other objects.
func (d *Daemon) submitDisk(op core.DiskOp) {
	if op.Kind == core.DiskSync {
		d.syncs <- op
		return
	}
	if d.pace(op) {
		return
	}
	if op.Kind == core.DiskWrite && !op.Sync && !d.store.WouldWait(int64(op.Len)) {
		d.doneHere(op, d.execDisk(op))
		return
	}
	if op.Kind == core.DiskRead && op.Len <= inlineReadMax && !op.Verify {
		// A read whose bytes are in the page cache is cheaper done here
		// than handed to a worker and back; one that would wait for the
		// device (or for the applier) goes to the worker, and so do
		// whole-object reads (recovery), which would hold up the node.
		buf := make([]byte, op.Len)
		m, ok, err := d.store.TryRead(uint64(op.OID), int64(op.Off), buf)
		if ok {
			d.metrics.readsCached.Inc()
			d.doneHere(op, d.readResult(op, buf, m, err))
			return
		}
	}
	d.toWorker(op)
}

// toWorker queues op on its object's worker.
func (d *Daemon) toWorker(op core.DiskOp) {
	w := maphash.Comparable(oidSeed, op.OID) % uint64(len(d.workers))
	d.workers[w] <- op
}

// complete hands a worker's result to the node, for the loop goroutine
// to run: a worker never runs the node itself, where it could block
// queueing an operation on its own full channel.
func (d *Daemon) complete(op core.DiskOp, res core.DiskDone) {
	d.countDisk(op, res)
	if d.enqueue(event{disk: &res}) {
		d.wakeLoop()
	}
}

// doneHere queues the result of an operation run while running the node.
func (d *Daemon) doneHere(op core.DiskOp, res core.DiskDone) {
	d.countDisk(op, res)
	d.localDisk = append(d.localDisk, res)
}

func (d *Daemon) countDisk(op core.DiskOp, res core.DiskDone) {
	d.metrics.diskOps.WithLabelValues(op.Kind.String()).Inc()
	if res.Err == core.OK && isCopy(op) {
		d.copied.Add(uint64(len(op.Data)))
	}
	if res.Err != core.OK {
		d.metrics.diskErrors.WithLabelValues(op.Kind.String(), res.Err.String()).Inc()
	}
}

func (d *Daemon) execDisk(op core.DiskOp) core.DiskDone {
	res := core.DiskDone{ID: op.ID}
	meta := disk.ObjectMeta{Version: op.Meta.Version, ReqID: op.Meta.ReqID, Deleted: op.Meta.Deleted}
	var err error
	switch op.Kind {
	case core.DiskRead:
		if op.Verify {
			return d.verify(op)
		}
		buf := make([]byte, op.Len)
		m, err := d.store.Read(uint64(op.OID), int64(op.Off), buf)
		return d.readResult(op, buf, m, err)
	case core.DiskWrite:
		data := op.Data
		if data == nil {
			if int(op.Len) <= len(zeros) {
				data = zeros[:op.Len]
			} else {
				data = make([]byte, op.Len)
			}
		}
		// Nothing changes an operation's data once the core has it
		// (client buffers are handed over, peer payloads are fresh and
		// zeros is read-only), so the store may keep it uncopied.
		err = d.store.WriteOwned(uint64(op.OID), meta, int64(op.Off), data, op.Sync)
	case core.DiskPut:
		err = d.store.PutOwned(uint64(op.OID), meta, op.Data, op.Sync)
	case core.DiskDelete:
		err = d.store.Delete(uint64(op.OID))
		if errors.Is(err, disk.ErrNotFound) {
			err = nil
		}
	}
	if err != nil {
		if !errors.Is(err, disk.ErrNotFound) {
			d.log.Warn("disk operation failed", "op", op.Kind, "oid", op.OID, "err", err)
		}
		res.Err = diskCode(err)
	}
	return res
}

// verifyChunk is the piece of an object a verifying read holds at a time.
const verifyChunk = 256 << 10

var verifyBufs = sync.Pool{New: func() any { b := make([]byte, verifyChunk); return &b }}

// verify reads op's range a chunk at a time into a pooled buffer, for the
// store to check its checksums, and returns no data.
func (d *Daemon) verify(op core.DiskOp) core.DiskDone {
	bp := verifyBufs.Get().(*[]byte)
	defer verifyBufs.Put(bp)
	var m disk.ObjectMeta
	var err error
	for off := int64(op.Off); off < int64(op.Off)+int64(op.Len) && err == nil; off += verifyChunk {
		n := min(int64(verifyChunk), int64(op.Off)+int64(op.Len)-off)
		m, err = d.store.Read(uint64(op.OID), off, (*bp)[:n])
	}
	return d.readResult(op, nil, m, err)
}

// readResult is the core's view of a store read.
func (d *Daemon) readResult(op core.DiskOp, buf []byte, m disk.ObjectMeta, err error) core.DiskDone {
	res := core.DiskDone{ID: op.ID, Data: buf, Meta: core.ObjMeta{Version: m.Version, ReqID: m.ReqID, Deleted: m.Deleted}}
	if err != nil {
		if !errors.Is(err, disk.ErrNotFound) {
			d.log.Warn("disk operation failed", "op", op.Kind, "oid", op.OID, "err", err)
		}
		res.Err = diskCode(err)
	}
	return res
}

// diskCode maps a store error to the core's result code.
func diskCode(err error) core.Code {
	switch {
	case err == nil:
		return core.OK
	case errors.Is(err, disk.ErrCorrupt):
		return core.ErrCorrupt
	case errors.Is(err, disk.ErrNoSpace):
		return core.ErrNoSpace
	case errors.Is(err, disk.ErrNotFound):
		return core.ErrNoObject
	}
	return core.ErrIO
}
