package net

import "github.com/sheepdog-go/sheepdog/internal/nowait"

// Batch sends the frames of one burst of work together. Batch.Send queues
// a frame like Transport.Send, but where a lane's writer goroutine is idle
// it leaves the frame queued without waking the writer; Flush then writes
// all the frames queued on such a lane from the calling goroutine, in one
// non-blocking writev(2). An event loop that answers a request with
// messages to several peers thus puts them on the wire at once, without a
// hand-off to each lane's writer goroutine: a thread wake-up that on a
// busy or virtualised machine costs more than the system call itself, and
// a replicated write waits for two of them. Frames the socket does not
// take at once (it is full, or the connection is failing) are left to the
// writer, which writes them before anything queued later, so frames of a
// lane stay in order either way.
//
// A Batch is used by one goroutine at a time; frames it queued are written
// only once it is flushed, so every Send must be followed by a Flush.
type Batch struct {
	t     *Transport
	lanes []*lane  // lanes holding frames for Flush
	iov   [][]byte // scratch: headers and payloads of one writev
	hdrs  []byte   // scratch: encoded headers
}

// maxIOV bounds the frames of one direct write (three iovecs each; Linux
// takes at most 1024).
const maxIOV = 1024

// NewBatch returns an empty Batch for t.
func (t *Transport) NewBatch() *Batch { return &Batch{t: t} }

// Send queues payload for node to like Transport.Send, with the same
// results; the frame goes out at the latest when b is flushed.
func (b *Batch) Send(to uint64, addr string, lane uint64, payload []byte) error {
	return b.t.send(to, addr, lane, split{head: payload}, b)
}

// SendSplit is Send of the payload head followed by data, without
// copying them into one buffer: a message's fields and a write's data go
// out together in one writev. The transport keeps both slices until the
// frame is written or dropped; their contents must not change.
func (b *Batch) SendSplit(to uint64, addr string, lane uint64, head, data []byte) error {
	return b.t.send(to, addr, lane, split{head: head, data: data}, b)
}

// Flush writes the frames Send left for it and wakes the writers that
// must take over.
func (b *Batch) Flush() {
	for i, l := range b.lanes {
		b.lanes[i] = nil
		p := l.p
		p.mu.Lock()
		l.held = false
		if len(l.q) > 0 && !(l.idle && l.raw != nil && l.rest == nil && b.writeDirect(l)) {
			select {
			case l.wake <- struct{}{}:
			default:
			}
		}
		p.mu.Unlock()
	}
	b.lanes = b.lanes[:0]
	clear(b.iov)
}

// writeDirect writes the frames queued on the idle lane l with one
// non-blocking writev and reports whether all of them went out. A frame
// written in part leaves its tail in l.rest; the frames after it stay
// queued. Called with l.p.mu held, which keeps the writer goroutine away
// from the connection.
func (b *Batch) writeDirect(l *lane) bool {
	frames := l.q
	if len(frames) > maxIOV/3 {
		frames = frames[:maxIOV/3]
	}
	if cap(b.hdrs) < headerSize*len(frames) {
		b.hdrs = make([]byte, headerSize*max(len(frames), 16))
	}
	b.iov = b.iov[:0]
	for i, f := range frames {
		h := b.hdrs[i*headerSize : (i+1)*headerSize]
		putHeader(h, f.header(typeMessage, 0))
		b.iov = append(b.iov, h, f.head, f.data)
	}
	n, _ := nowait.Writev(l.raw, b.iov)
	if n <= 0 {
		// Nothing went out (the socket is full, or the connection
		// broke): the writer takes over and meets the error itself.
		return false
	}
	t := l.p.t
	sent, bytes := 0, uint64(0)
	for i, f := range frames {
		size := headerSize + f.len()
		if n == 0 {
			sent = i
			break
		}
		if n < size {
			// In part: the writer finishes this frame first. Headers
			// live in scratch, so their tail is copied.
			l.rest = unwritten(b.iov[3*i:3*i+3], n)
			t.stats.framesPartial.Add(1)
			sent = i
			break
		}
		n -= size
		sent = i + 1
		bytes += uint64(f.len())
	}
	k := sent
	if l.rest != nil {
		k++ // the partly written frame now lives in l.rest (still counted in queued)
	}
	left := copy(l.q, l.q[k:])
	clear(l.q[left:])
	l.q = l.q[:left]
	l.p.queued.Add(-int64(sent))
	t.stats.framesSent.Add(uint64(sent))
	t.stats.framesDirect.Add(uint64(sent))
	t.stats.bytesSent.Add(bytes)
	return len(l.q) == 0 && l.rest == nil
}

// unwritten returns what is left of a frame's parts (header, head, data)
// once n of their bytes were written. The header lives in scratch space,
// so its tail is copied.
func unwritten(parts [][]byte, n int) [][]byte {
	rest := make([][]byte, 0, len(parts))
	for i, p := range parts {
		switch {
		case n >= len(p):
			n -= len(p)
			continue
		case i == 0:
			p = append([]byte(nil), p[n:]...)
		default:
			p = p[n:]
		}
		n = 0
		rest = append(rest, p)
	}
	return rest
}
