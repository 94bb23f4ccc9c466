package disk

import (
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/raft/v3/raftpb"
)

// meta.db buckets. Every update is one bbolt transaction, fsynced on commit.
var (
	bucketMeta    = []byte("meta")    // node metadata: key -> value
	bucketRaft    = []byte("raft")    // "hardstate", "snapshot": marshaled raftpb
	bucketRaftLog = []byte("raftlog") // 8-byte big-endian index -> marshaled raftpb.Entry
	keyHardState  = []byte("hardstate")
	keySnapshot   = []byte("snapshot")
)

func openMetaDB(path string, noSync bool) (*bolt.DB, error) {
	db, err := bolt.Open(path, 0o644, &bolt.Options{
		NoSync: noSync,
		// Another process (or Store) holding the directory fails Open
		// instead of blocking forever.
		Timeout:      5 * time.Second,
		FreelistType: bolt.FreelistMapType,
	})
	if err != nil {
		return nil, ioErr("open meta.db", err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketRaft, bucketRaftLog} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, ioErr("init meta.db", err)
	}
	return db, nil
}

// RaftState is the persisted raft state.
type RaftState struct {
	HardState raftpb.HardState
	Snapshot  raftpb.Snapshot
	Entries   []raftpb.Entry // in index order, all newer than Snapshot
}

func idxKey(i uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], i)
	return k[:]
}

// LoadRaft returns the persisted hard state, snapshot and log entries.
func (s *Store) LoadRaft() (RaftState, error) {
	if err := s.enter(); err != nil {
		return RaftState{}, err
	}
	defer s.life.RUnlock()
	var rs RaftState
	err := s.db.View(func(tx *bolt.Tx) error {
		rb := tx.Bucket(bucketRaft)
		if v := rb.Get(keyHardState); v != nil {
			if err := rs.HardState.Unmarshal(v); err != nil {
				return fmt.Errorf("hard state: %w: %w", ErrCorrupt, err)
			}
		}
		if v := rb.Get(keySnapshot); v != nil {
			if err := rs.Snapshot.Unmarshal(v); err != nil {
				return fmt.Errorf("snapshot: %w: %w", ErrCorrupt, err)
			}
		}
		return tx.Bucket(bucketRaftLog).ForEach(func(k, v []byte) error {
			var e raftpb.Entry
			if err := e.Unmarshal(v); err != nil {
				return fmt.Errorf("entry %d: %w: %w", binary.BigEndian.Uint64(k), ErrCorrupt, err)
			}
			rs.Entries = append(rs.Entries, e)
			return nil
		})
	})
	if err != nil {
		return RaftState{}, fmt.Errorf("disk: load raft state: %w", err)
	}
	return rs, nil
}

// SaveRaft persists one raft Ready in a single durable transaction: snap if
// newer than the stored snapshot (dropping the entries it covers), then
// ents (replacing any stored entries with index >= ents[0].Index; entries
// covered by the snapshot are skipped), then hs. An empty hs or snap means
// unchanged. ents must be contiguous and must not leave a gap after the
// stored log.
func (s *Store) SaveRaft(hs raftpb.HardState, ents []raftpb.Entry, snap raftpb.Snapshot) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.life.RUnlock()
	for i := 1; i < len(ents); i++ {
		if ents[i].Index != ents[i-1].Index+1 {
			return fmt.Errorf("disk: save raft: entries not contiguous at index %d after %d: %w",
				ents[i].Index, ents[i-1].Index, ErrInvalid)
		}
	}
	err := s.update(func(tx *bolt.Tx) error {
		rb, lb := tx.Bucket(bucketRaft), tx.Bucket(bucketRaftLog)
		// The log's end is read before anything is deleted: on a bucket
		// whose pages this transaction emptied, bbolt's Cursor.Last loops
		// for ever.
		last := uint64(0)
		if k, _ := lb.Cursor().Last(); k != nil {
			last = binary.BigEndian.Uint64(k)
		}
		var cur raftpb.Snapshot
		if v := rb.Get(keySnapshot); v != nil {
			if err := cur.Unmarshal(v); err != nil {
				return fmt.Errorf("snapshot: %w: %w", ErrCorrupt, err)
			}
		}
		if snap.Metadata.Index > cur.Metadata.Index {
			b, err := snap.Marshal()
			if err != nil {
				return err
			}
			if err := rb.Put(keySnapshot, b); err != nil {
				return err
			}
			if err := deleteRange(lb, 0, snap.Metadata.Index); err != nil {
				return err
			}
			cur = snap
		}
		for len(ents) > 0 && ents[0].Index <= cur.Metadata.Index {
			ents = ents[1:]
		}
		if len(ents) > 0 {
			last = max(last, cur.Metadata.Index)
			if first := ents[0].Index; first > last+1 {
				return fmt.Errorf("entries start at %d but the log ends at %d: %w", first, last, ErrInvalid)
			}
			if err := deleteRange(lb, ents[0].Index, ^uint64(0)); err != nil {
				return err
			}
			for i := range ents {
				b, err := ents[i].Marshal()
				if err != nil {
					return err
				}
				if err := lb.Put(idxKey(ents[i].Index), b); err != nil {
					return err
				}
			}
		}
		if hs != (raftpb.HardState{}) {
			b, err := hs.Marshal()
			if err != nil {
				return err
			}
			if err := rb.Put(keyHardState, b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return ioErr("save raft state", err)
	}
	return nil
}

// deleteRange deletes the log entries with lo <= index <= hi.
func deleteRange(b *bolt.Bucket, lo, hi uint64) error {
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(idxKey(lo)); k != nil && binary.BigEndian.Uint64(k) <= hi; k, _ = c.Next() {
		keys = append(keys, append([]byte{}, k...))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// CompactRaft drops the log entries with index <= index. Raft needs the
// term of the last dropped entry, so callers compact up to a saved
// snapshot's index.
func (s *Store) CompactRaft(index uint64) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.life.RUnlock()
	err := s.update(func(tx *bolt.Tx) error {
		return deleteRange(tx.Bucket(bucketRaftLog), 0, index)
	})
	if err != nil {
		return ioErr("compact raft log", err)
	}
	return nil
}

// GetMeta returns the node metadata value for key, or ErrNotFound.
func (s *Store) GetMeta(key string) ([]byte, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.life.RUnlock()
	var val []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get([]byte(key)); v != nil {
			val = append([]byte{}, v...)
		}
		return nil
	})
	if err != nil {
		return nil, ioErr("get meta", err)
	}
	if val == nil {
		return nil, fmt.Errorf("disk: meta key %q: %w", key, ErrNotFound)
	}
	return val, nil
}

// PutMeta durably stores a node metadata value.
func (s *Store) PutMeta(key string, val []byte) error {
	if key == "" {
		return fmt.Errorf("disk: put meta: empty key: %w", ErrInvalid)
	}
	if err := s.enter(); err != nil {
		return err
	}
	defer s.life.RUnlock()
	err := s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put([]byte(key), append([]byte{}, val...))
	})
	if err != nil {
		return ioErr("put meta", err)
	}
	return nil
}
