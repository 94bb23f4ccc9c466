package core

import (
	"fmt"

	"go.etcd.io/raft/v3/raftpb"
)

// MsgType names a peer message.
type MsgType uint8

// Peer messages. Every message carries the sender's epoch; a receiver
// refuses work from an older epoch and holds work from a newer one until
// it has caught up.
const (
	MsgRaft        MsgType = iota + 1 // raft traffic of the cluster log
	MsgJoin                           // a node asks to become (again) a member
	MsgLeaseReq                       // a primary asks a co-replica for a read lease
	MsgLeaseGrant                     // the co-replica promises not to serve a newer epoch's recovery before the lease ends
	MsgIO                             // gateway → primary: one object operation
	MsgIOResp                         // Prev: the object's version once the operation completed (every replica has it)
	MsgRepl                           // primary → replica: apply one versioned write
	MsgReplResp                       //
	MsgSync                           // gateway → replica: make these objects durable (flush)
	MsgSyncResp                       //
	MsgListReq                        // recovery: which objects placed on me do you hold, at which versions?
	MsgListResp                       //
	MsgFetchReq                       // recovery/repair: send me this object at at least this version
	MsgFetchResp                      //
	MsgRecovered                      // I hold every object the epoch places on me
	MsgCheckReq                       // vdi check: version and digest of an object
	MsgCheckResp                      //
	MsgJoinAck                        // answer to MsgJoin: the members and their addresses
	MsgRevoke                         // primary → attacher: give back the object handed over with token Version
	MsgRevokeResp                     // the object is settled; Prev: the highest version the attacher gave it
	MsgBarrier                        // VDI OID.VID(): answer once you applied the cluster log up to Version and settled its writes
	MsgBarrierResp                    // OIDs: the VDI's objects you hold
	MsgReclaim                        // delete these objects of a deleted VDI: nothing references them
	MsgReclaimResp                    //
	MsgRestamp                        // Objects: give each object you hold at exactly that version the version Version
	MsgRestampResp                    //
	MsgPing                           // are you there? (a peer a request had to be resent to)
	MsgPong                           // answer to MsgPing
	MsgUnreachable                    // member → leader: Objects[i].OID names a peer I cannot reach, Version for how many ticks
	msgTypeEnd
)

var msgTypeNames = [...]string{
	MsgRaft: "raft", MsgJoin: "join", MsgLeaseReq: "lease-req", MsgLeaseGrant: "lease-grant",
	MsgIO: "io", MsgIOResp: "io-resp", MsgRepl: "repl", MsgReplResp: "repl-resp",
	MsgSync: "sync", MsgSyncResp: "sync-resp", MsgListReq: "list-req", MsgListResp: "list-resp",
	MsgFetchReq: "fetch-req", MsgFetchResp: "fetch-resp", MsgRecovered: "recovered",
	MsgCheckReq: "check-req", MsgCheckResp: "check-resp", MsgJoinAck: "join-ack",
	MsgRevoke: "revoke", MsgRevokeResp: "revoke-resp", MsgBarrier: "barrier", MsgBarrierResp: "barrier-resp",
	MsgReclaim: "reclaim", MsgReclaimResp: "reclaim-resp", MsgRestamp: "restamp", MsgRestampResp: "restamp-resp",
	MsgPing: "ping", MsgPong: "pong", MsgUnreachable: "unreachable",
}

func (t MsgType) String() string {
	if t > 0 && t < msgTypeEnd {
		return msgTypeNames[t]
	}
	return fmt.Sprintf("msg(%d)", uint8(t))
}

// Op is an object operation.
type Op uint8

// Object operations.
const (
	OpRead     Op = iota + 1
	OpWrite       // data at Off
	OpZero        // write zeros over [Off, Off+Len)
	OpDiscard     // the whole object becomes a tombstone: reads return zeros, space is freed
	OpConverge    // MsgRepl: make your copy the primary's (version Version) after a failed write
	OpCheck       // MsgIO: verify every replica against the primary's copy and repair the ones that differ
	OpStat        // MsgIO: does the object hold data (a read of its allocation, answered in Len: 1 yes, 0 no)
)

func (o Op) String() string {
	switch o {
	case OpRead:
		return "read"
	case OpWrite:
		return "write"
	case OpZero:
		return "zero"
	case OpDiscard:
		return "discard"
	case OpConverge:
		return "converge"
	case OpCheck:
		return "check"
	case OpStat:
		return "stat"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Code is the result of an operation, carried in responses and replies.
type Code uint8

// Result codes.
const (
	OK              Code = iota
	ErrStaleEpoch        // the receiver is in a newer epoch (its epoch is in the response)
	ErrNotMember         // the receiver is not a serving member of that epoch
	ErrNotReady          // retry later (recovering, no lease, no leader, ...)
	ErrIO                // disk error
	ErrNoSpace           // a disk is full
	ErrCorrupt           // checksum mismatch and no good replica
	ErrNoObject          // the object is not there (fetch)
	ErrInvalid           // malformed or impossible request
	ErrNoVDI             // no such VDI
	ErrVDIExists         // VDI name taken
	ErrLocked            // VDI attached elsewhere
	ErrNotFormatted      // cluster not formatted
	ErrStale             // a superseded write (its attacher was replaced)
	ErrTimeout           // gave up waiting
	ErrShutdown          // the node is stopping
	ErrPerm              // read-only VDI
	ErrFull              // no free VDI id
	ErrBusy              // an operation is already in progress
	ErrNeedData          // MsgReplResp: the write's data was not stashed here; send it
	ErrTagExists         // a snapshot of that VDI has that tag already
	codeEnd
)

var codeNames = [...]string{
	OK: "ok", ErrStaleEpoch: "stale epoch", ErrNotMember: "not a member", ErrNotReady: "not ready",
	ErrIO: "I/O error", ErrNoSpace: "no space left", ErrCorrupt: "data corrupted", ErrNoObject: "no object",
	ErrInvalid: "invalid request", ErrNoVDI: "no such VDI", ErrVDIExists: "VDI exists already",
	ErrLocked: "VDI is attached elsewhere", ErrNotFormatted: "cluster is not formatted",
	ErrStale: "superseded request", ErrTimeout: "timed out", ErrShutdown: "shutting down",
	ErrPerm: "operation not permitted", ErrFull: "no free VDI id", ErrBusy: "busy",
	ErrNeedData: "write data not stashed", ErrTagExists: "snapshot tag exists already",
}

func (c Code) String() string {
	if c < codeEnd {
		return codeNames[c]
	}
	return fmt.Sprintf("code(%d)", uint8(c))
}

// Error makes a non-OK Code usable as an error.
func (c Code) Error() string { return c.String() }

// Err returns nil for OK and the code otherwise.
func (c Code) Err() error {
	if c == OK {
		return nil
	}
	return c
}

// Message flags.
const (
	FlagFUA       uint32 = 1 << iota // make this write durable before acknowledging it
	FlagDeleted                      // the object is a tombstone
	FlagRepaired                     // MsgCheckResp: the copy was replaced
	FlagStashed                      // MsgRepl without data: the replica is the writing gateway, which has it
	FlagAskDirect                    // MsgIO: the attacher, a replica, asks to be handed the object over (direct writes)
	FlagDirect                       // MsgIOResp: handed over, token in Version; MsgIO to self, MsgRepl: from the node it was handed to
	FlagRecovered                    // MsgFetchReq: answer only with a copy recovered in the asker's epoch, else ErrNotReady
	FlagInherited                    // MsgIO read: the object is shared from an ancestor; if it is missing say ErrNoObject, not zeros
	FlagOrphans                      // MsgReclaim: the objects are a sealed snapshot's orphans (build.go)
)

// ObjVersion is an entry of an object list.
type ObjVersion struct {
	OID     OID
	Version uint64
	Deleted bool
}

// Message is one peer message. It is a flat record: each type uses the
// fields it needs (documented on the type constants).
type Message struct {
	Type    MsgType
	From    NodeID
	To      NodeID
	ToAddr  string // set when To is not yet known (joining through a seed address)
	Epoch   uint32
	ID      uint64 // request id, echoed in the response
	Code    Code
	OID     OID
	Op      Op
	Off     uint32
	Len     uint32
	Flags   uint32
	Version uint64 // object version (new version for MsgRepl)
	Prev    uint64 // MsgRepl: the version the write applies on top of
	ReqID   uint64 // client write id, for de-duplication of retries
	Fence   uint64 // MsgRepl, MsgCheckReq: the hand-over the sender acts under (direct writes; 0: none yet)
	Data    []byte
	Node    *NodeInfo       // MsgJoin
	Nodes   []NodeInfo      // MsgJoinAck
	Objects []ObjVersion    // MsgListResp
	OIDs    []OID           // MsgSync
	Raft    *raftpb.Message // MsgRaft
}

func (m *Message) String() string {
	return fmt.Sprintf("%v %d→%d e%d id=%d %v oid=%v", m.Type, m.From, m.To, m.Epoch, m.ID, m.Code, m.OID)
}

// Size is the encoded size of m: Marshal allocates exactly this much.
// (An estimate that fell short made every 4 KiB write message grow its
// buffer to 8 KiB and copy itself once more.)
func (m *Message) Size() int {
	n := msgFixedSize + len(m.ToAddr) + len(m.Data) + len(m.Objects)*objVersionSize + len(m.OIDs)*8
	if m.Node != nil {
		n += nodeSize(*m.Node)
	}
	for _, nd := range m.Nodes {
		n += nodeSize(nd)
	}
	if m.Raft != nil {
		n += m.Raft.Size()
	}
	return n
}

// Encoded sizes of a Message's fixed fields (with the lengths and counts
// of its variable ones), of an ObjVersion and of a NodeInfo without its
// strings.
const (
	msgFixedSize   = 2 + 1 + 8 + 8 + 4 + 4 + 8 + 1 + 8 + 1 + 4 + 4 + 4 + 8 + 8 + 8 + 8 + 4 + 1 + 4 + 4 + 4 + 4
	objVersionSize = 8 + 8 + 1
	nodeFixedSize  = 8 + 4 + 4 + 4 + 2 + 8 + 8
)

func nodeSize(n NodeInfo) int { return nodeFixedSize + len(n.Addr) + len(n.NBDAddr) }

const msgMagic = 0x5344 // "SD"

// Marshal encodes m for the wire.
func (m *Message) Marshal() ([]byte, error) {
	head, err := m.marshalHead()
	if err != nil {
		return nil, err
	}
	return append(head, m.Data...), nil
}

// MarshalSplit encodes m as head followed by m.Data, which it returns
// uncopied: the encoding puts Data's bytes last, so a transport can send
// both parts with one writev without copying a write's data into a new
// buffer (or allocating one) per replica. head has room for data appended
// (Marshal does that).
func (m *Message) MarshalSplit() (head, data []byte, err error) {
	head, err = m.marshalHead()
	return head, m.Data, err
}

// marshalHead encodes everything but Data's bytes, in a buffer of Size.
func (m *Message) marshalHead() ([]byte, error) {
	e := enc{b: make([]byte, 0, m.Size())}
	e.u16(msgMagic)
	e.u8(uint8(m.Type))
	e.u64(uint64(m.From))
	e.u64(uint64(m.To))
	e.str(m.ToAddr)
	e.u32(m.Epoch)
	e.u64(m.ID)
	e.u8(uint8(m.Code))
	e.u64(uint64(m.OID))
	e.u8(uint8(m.Op))
	e.u32(m.Off)
	e.u32(m.Len)
	e.u32(m.Flags)
	e.u64(m.Version)
	e.u64(m.Prev)
	e.u64(m.ReqID)
	e.u64(m.Fence)
	e.u32(uint32(len(m.Data))) // the bytes come last
	e.bool(m.Node != nil)
	if m.Node != nil {
		encodeNode(&e, *m.Node)
	}
	e.u32(uint32(len(m.Objects)))
	for _, o := range m.Objects {
		e.u64(uint64(o.OID))
		e.u64(o.Version)
		e.bool(o.Deleted)
	}
	e.u32(uint32(len(m.OIDs)))
	for _, o := range m.OIDs {
		e.u64(uint64(o))
	}
	e.u32(uint32(len(m.Nodes)))
	for _, n := range m.Nodes {
		encodeNode(&e, n)
	}
	if m.Raft != nil {
		b, err := m.Raft.Marshal()
		if err != nil {
			return nil, fmt.Errorf("core: marshal raft message: %w", err)
		}
		e.bytes(b)
	} else {
		e.bytes(nil)
	}
	return e.b, nil
}

// UnmarshalMessage decodes a message. Data aliases b.
func UnmarshalMessage(b []byte) (*Message, error) {
	d := dec{b: b}
	if d.u16() != msgMagic {
		if d.err != nil {
			return nil, d.err
		}
		return nil, fmt.Errorf("core: bad message magic")
	}
	m := &Message{}
	m.Type = MsgType(d.u8())
	m.From = NodeID(d.u64())
	m.To = NodeID(d.u64())
	m.ToAddr = d.str()
	m.Epoch = d.u32()
	m.ID = d.u64()
	m.Code = Code(d.u8())
	m.OID = OID(d.u64())
	m.Op = Op(d.u8())
	m.Off = d.u32()
	m.Len = d.u32()
	m.Flags = d.u32()
	m.Version = d.u64()
	m.Prev = d.u64()
	m.ReqID = d.u64()
	m.Fence = d.u64()
	dataLen := int(d.u32())
	if d.bool() {
		n := decodeNode(&d)
		m.Node = &n
	}
	if n := d.count(17); n > 0 {
		m.Objects = make([]ObjVersion, n)
		for i := range m.Objects {
			m.Objects[i] = ObjVersion{OID: OID(d.u64()), Version: d.u64(), Deleted: d.bool()}
		}
	}
	if n := d.count(8); n > 0 {
		m.OIDs = make([]OID, n)
		for i := range m.OIDs {
			m.OIDs[i] = OID(d.u64())
		}
	}
	if n := d.count(38); n > 0 {
		m.Nodes = make([]NodeInfo, n)
		for i := range m.Nodes {
			m.Nodes[i] = decodeNode(&d)
		}
	}
	if rb := d.bytes(); rb != nil {
		m.Raft = &raftpb.Message{}
		if err := m.Raft.Unmarshal(rb); err != nil {
			return nil, fmt.Errorf("core: unmarshal raft message: %w", err)
		}
	}
	if d.err == nil && dataLen != len(d.b) {
		return nil, fmt.Errorf("core: message says %d data bytes, %d follow", dataLen, len(d.b))
	}
	// A truncated message (d.err set) has no data to take: dataLen may
	// be anything.
	if d.err == nil && dataLen > 0 {
		m.Data = d.b[:dataLen:dataLen]
		d.b = d.b[dataLen:]
	}
	if err := d.done(); err != nil {
		return nil, err
	}
	if m.Type == 0 || m.Type >= msgTypeEnd {
		return nil, fmt.Errorf("core: unknown message type %d", m.Type)
	}
	return m, nil
}
