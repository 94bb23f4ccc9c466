package nbd

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// MemChunkSize is the allocation granularity of MemVolume.
const MemChunkSize = 4096

// MemBackend is an in-memory Backend for tests and benchmarks. Each export
// can be attached by one client at a time; a second Open fails with
// ErrBusy (after waiting up to AttachWait for the first to detach).
type MemBackend struct {
	// AttachWait is how long Open waits for an export attached elsewhere
	// to be released before failing with ErrBusy. Zero fails at once.
	// Useful for clients that reconnect right after disconnecting,
	// racing the server's detach. Set it before serving.
	AttachWait time.Duration

	mu   sync.Mutex
	vols map[string]*MemVolume
}

// NewMemBackend returns an empty MemBackend.
func NewMemBackend() *MemBackend {
	return &MemBackend{vols: make(map[string]*MemVolume)}
}

// Add creates an export of size bytes reading as zeroes, replacing any
// export of that name, and returns its volume.
func (b *MemBackend) Add(name string, size uint64) *MemVolume {
	v := &MemVolume{
		name:     name,
		size:     size,
		fastZero: true,
		chunks:   make(map[uint64][]byte),
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.vols == nil {
		b.vols = make(map[string]*MemVolume)
	}
	b.vols[name] = v
	return v
}

// Open attaches the named export. The returned Volume is the *MemVolume
// that Add returned; its Close detaches it.
func (b *MemBackend) Open(ctx context.Context, name string) (Volume, error) {
	var deadline <-chan time.Time
	if b.AttachWait > 0 {
		t := time.NewTimer(b.AttachWait)
		defer t.Stop()
		deadline = t.C
	}
	for {
		b.mu.Lock()
		v, ok := b.vols[name]
		b.mu.Unlock()
		if !ok {
			return nil, fmt.Errorf("%w %q", ErrUnknownExport, name)
		}
		released := v.attach()
		if released == nil {
			return v, nil
		}
		if deadline == nil {
			return nil, fmt.Errorf("export %q: %w", name, ErrBusy)
		}
		select {
		case <-released:
		case <-deadline:
			return nil, fmt.Errorf("export %q: %w", name, ErrBusy)
		case <-ctx.Done():
			return nil, fmt.Errorf("export %q: waiting for detach: %w", name, ctx.Err())
		}
	}
}

// List returns the exports sorted by name.
func (b *MemBackend) List(ctx context.Context) ([]Export, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]Export, 0, len(b.vols))
	for name, v := range b.vols {
		out = append(out, Export{Name: name, Description: v.Description()})
	}
	slices.SortFunc(out, func(x, y Export) int { return strings.Compare(x.Name, y.Name) })
	return out, nil
}

// MemVolume is a sparse in-memory volume: storage is allocated in 4 KiB
// chunks on first write, and Extents reports unallocated chunks as holes
// reading as zeroes. It is safe for concurrent use and may also be used
// directly, without attaching it.
type MemVolume struct {
	name string
	size uint64

	mu       sync.RWMutex
	chunks   map[uint64][]byte // chunk index -> MemChunkSize bytes
	readOnly bool
	desc     string
	fastZero bool

	amu      sync.Mutex
	released chan struct{} // non-nil while attached; closed on detach
}

var (
	_ Volume    = (*MemVolume)(nil)
	_ Extenter  = (*MemVolume)(nil)
	_ Describer = (*MemVolume)(nil)
	_ Backend   = (*MemBackend)(nil)
)

// attach marks v attached and returns nil, or returns a channel closed
// when the current attachment ends.
func (v *MemVolume) attach() <-chan struct{} {
	v.amu.Lock()
	defer v.amu.Unlock()
	if v.released != nil {
		return v.released
	}
	v.released = make(chan struct{})
	return nil
}

// Attached reports whether a client has the volume attached.
func (v *MemVolume) Attached() bool {
	v.amu.Lock()
	defer v.amu.Unlock()
	return v.released != nil
}

// Close detaches the volume. It is a no-op when not attached.
func (v *MemVolume) Close() error {
	v.amu.Lock()
	defer v.amu.Unlock()
	if v.released != nil {
		close(v.released)
		v.released = nil
	}
	return nil
}

// Name returns the export name.
func (v *MemVolume) Name() string { return v.name }

// Size returns the size in bytes.
func (v *MemVolume) Size() uint64 { return v.size }

// SetReadOnly makes writes, trims and zeroing fail with ErrPermission (and
// the export be announced read-only to clients attaching afterwards).
func (v *MemVolume) SetReadOnly(ro bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.readOnly = ro
}

// ReadOnly reports whether the volume refuses writes.
func (v *MemVolume) ReadOnly() bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.readOnly
}

// SetDescription sets the text of NBD_INFO_DESCRIPTION and NBD_OPT_LIST.
func (v *MemVolume) SetDescription(d string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.desc = d
}

// Description implements Describer.
func (v *MemVolume) Description() string {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.desc
}

// SetFastZero selects whether Zero with FastZero succeeds (the default)
// or fails with ErrNotFast.
func (v *MemVolume) SetFastZero(ok bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.fastZero = ok
}

// AllocatedChunks returns the number of allocated 4 KiB chunks.
func (v *MemVolume) AllocatedChunks() int {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return len(v.chunks)
}

func (v *MemVolume) check(off, length uint64, op string, outOfRange error) error {
	if off > v.size || length > v.size-off {
		return fmt.Errorf("%s [%d, +%d) of %q (size %d): %w", op, off, length, v.name, v.size, outOfRange)
	}
	return nil
}

// forChunks calls fn for each chunk overlapping [off, off+length) with the
// chunk index and the overlapping byte range within the chunk.
func forChunks(off, length uint64, fn func(idx uint64, from, to int)) {
	for length > 0 {
		idx := off / MemChunkSize
		from := off % MemChunkSize
		n := min(length, MemChunkSize-from)
		fn(idx, int(from), int(from+n))
		off += n
		length -= n
	}
}

// ReadAt implements Volume.
func (v *MemVolume) ReadAt(ctx context.Context, p []byte, off uint64) error {
	if err := v.check(off, uint64(len(p)), "read", ErrInvalid); err != nil {
		return err
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	pos := 0
	forChunks(off, uint64(len(p)), func(idx uint64, from, to int) {
		dst := p[pos : pos+to-from]
		if c, ok := v.chunks[idx]; ok {
			copy(dst, c[from:to])
		} else {
			clear(dst)
		}
		pos += to - from
	})
	return nil
}

// WriteAt implements Volume.
func (v *MemVolume) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	if err := v.check(off, uint64(len(p)), "write", ErrNoSpace); err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.readOnly {
		return fmt.Errorf("write to %q: %w", v.name, ErrPermission)
	}
	pos := 0
	forChunks(off, uint64(len(p)), func(idx uint64, from, to int) {
		c, ok := v.chunks[idx]
		if !ok {
			c = make([]byte, MemChunkSize)
			v.chunks[idx] = c
		}
		copy(c[from:to], p[pos:])
		pos += to - from
	})
	return nil
}

// Flush implements Volume; memory needs no flushing.
func (v *MemVolume) Flush(ctx context.Context) error { return nil }

// Trim implements Volume: whole chunks are deallocated, partial ones
// zeroed.
func (v *MemVolume) Trim(ctx context.Context, off, length uint64, fua bool) error {
	if err := v.check(off, length, "trim", ErrInvalid); err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.readOnly {
		return fmt.Errorf("trim of %q: %w", v.name, ErrPermission)
	}
	v.zeroLocked(off, length, false)
	return nil
}

// Zero implements Volume: without NoHole whole chunks are deallocated,
// with it they stay (or become) allocated and are cleared.
func (v *MemVolume) Zero(ctx context.Context, off, length uint64, flags ZeroFlags) error {
	if err := v.check(off, length, "zero", ErrNoSpace); err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.readOnly {
		return fmt.Errorf("zero of %q: %w", v.name, ErrPermission)
	}
	if flags.FastZero && !v.fastZero {
		return fmt.Errorf("zero of %q: %w", v.name, ErrNotFast)
	}
	v.zeroLocked(off, length, flags.NoHole)
	return nil
}

func (v *MemVolume) zeroLocked(off, length uint64, allocate bool) {
	forChunks(off, length, func(idx uint64, from, to int) {
		c, ok := v.chunks[idx]
		switch {
		case from == 0 && to == MemChunkSize && !allocate:
			delete(v.chunks, idx)
		case ok:
			clear(c[from:to])
		case allocate:
			v.chunks[idx] = make([]byte, MemChunkSize)
		}
	})
}

// Extents implements Extenter: allocated chunks are data, the others
// holes that read as zeroes.
func (v *MemVolume) Extents(ctx context.Context, off, length uint64) ([]Extent, error) {
	if err := v.check(off, length, "block status", ErrInvalid); err != nil {
		return nil, err
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	var out []Extent
	forChunks(off, length, func(idx uint64, from, to int) {
		_, allocated := v.chunks[idx]
		n := uint64(to - from)
		if k := len(out) - 1; k >= 0 && out[k].Hole == !allocated {
			out[k].Length += n
			return
		}
		out = append(out, Extent{Length: n, Hole: !allocated, Zero: !allocated})
	})
	return out, nil
}
