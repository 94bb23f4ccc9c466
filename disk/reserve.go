package disk

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The metadata reserve. A node whose filesystem fills up must keep
// running: refuse the writes it cannot store (ErrNoSpace, ENOSPC to the
// client) and serve again once space is freed. But the cluster log (raft
// entries in meta.db) has to be written whatever happens, or the node can
// take no part in the cluster at all. So the store keeps a file of
// reserved blocks. When meta.db cannot grow, the reserve is given up and
// the write retried; from then on the store is full: journal space for
// object writes is refused until the filesystem has twice the reserve
// free again, when the reserve is taken back.

const (
	reserveName = "reserve"
	reserveMin  = 4 << 20
	reserveMax  = 64 << 20
	fullRecheck = 500 * time.Millisecond
)

type reserve struct {
	mu      sync.Mutex
	path    string
	size    int64
	held    bool
	full    atomic.Bool // read without mu on every write
	checked time.Time
	sync    func(*os.File) error
}

// openReserve sizes the reserve at a thirty-second of the filesystem (within
// [reserveMin, reserveMax]) and takes it if it is not held yet.
func (s *Store) openReserve() {
	r := &s.res
	r.path = filepath.Join(s.dir, reserveName)
	r.sync = s.fsync
	r.size = reserveMin
	if total, err := fsTotal(s.dir); err == nil {
		r.size = min(max(int64(total/32), reserveMin), reserveMax)
	}
	if s.light() {
		r.size = lightPrealloc
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.take(); err != nil {
		r.full.Store(true)
		s.log.Warn("the filesystem is full: no metadata reserve; object writes are refused until space is freed",
			"reserve", r.size, "err", err)
	}
}

// take (re)creates the reserve file at its full size. r.mu is held.
func (r *reserve) take() error {
	f, err := os.OpenFile(r.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() < r.size {
		err = preallocate(f, st.Size(), r.size-st.Size())
		if errors.Is(err, errNoPrealloc) {
			err = f.Truncate(r.size) // no blocks held, but nothing better here
		}
		if err != nil {
			_ = f.Truncate(st.Size())
			return err
		}
		if err := r.sync(f); err != nil {
			return err
		}
	}
	r.held = true
	return nil
}

// release gives the reserve up for metadata; it reports whether there
// was one to give.
func (s *Store) release() bool {
	r := &s.res
	r.mu.Lock()
	defer r.mu.Unlock()
	r.full.Store(true)
	if !r.held {
		return false
	}
	r.held = false
	if err := os.Truncate(r.path, 0); err != nil {
		s.log.Error("releasing the metadata reserve", "err", err)
		return false
	}
	s.log.Warn("the filesystem is full: released the metadata reserve; object writes are refused until space is freed",
		"reserve", r.size)
	return true
}

// spaceForData refuses new journal space while the store is full, and
// ends that state (taking the reserve back) once there is room again.
func (s *Store) spaceForData() error {
	r := &s.res
	if !r.full.Load() {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.full.Load() {
		return nil
	}
	if time.Since(r.checked) < fullRecheck {
		return ErrNoSpace
	}
	r.checked = time.Now()
	free, err := fsFree(s.dir)
	if err != nil || free < uint64(2*r.size) {
		return ErrNoSpace
	}
	if !r.held {
		if err := r.take(); err != nil {
			return ErrNoSpace
		}
	}
	r.full.Store(false)
	s.log.Info("space is back: metadata reserve taken again, object writes accepted", "free", free)
	return nil
}

// noteFull records that a data write found the filesystem full, and
// gives the space of the spare journal files back.
func (s *Store) noteFull() {
	s.res.mu.Lock()
	s.res.full.Store(true)
	s.res.checked = time.Now()
	s.res.mu.Unlock()
	s.dropSpares()
}

// update runs a meta.db transaction; when the filesystem is full it gives
// the reserve up and tries once more.
func (s *Store) update(fn func(*bolt.Tx) error) error {
	err := s.db.Update(fn)
	if err != nil && isNoSpace(err) && s.release() {
		err = s.db.Update(fn)
	}
	return err
}
