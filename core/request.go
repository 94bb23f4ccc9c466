package core

import "fmt"

// ReqType names a client or admin request.
type ReqType uint8

// Requests a driver submits with Step. I/O requests address a VDI by id
// and need the VDI attached at this node for writes.
const (
	ReqRead      ReqType = iota + 1
	ReqWrite             // Data at Off; FUA makes it durable before the reply
	ReqFlush             // every write replied to before this request is durable
	ReqTrim              // discard [Off, Off+Len): whole objects are freed, partial ranges zeroed
	ReqZero              // write zeros over [Off, Off+Len); NoHole keeps space allocated
	ReqFormat            // Copies, BlockShift
	ReqCreateVDI         // Name, Size, Copies, BlockShift
	ReqDeleteVDI         // Name
	ReqResizeVDI         // Name, Size
	ReqAttach            // VID: take the attach lock for this node; Force takes it over
	ReqDetach            // VID
	ReqShutdown          // stop every node of the cluster
	ReqCheck             // VID: verify every object's replicas and repair those that differ or are corrupted
	ReqMap               // which objects of [Off, Off+Len) hold data: Reply.Data has a byte per object, 1 if allocated
	reqTypeEnd
)

var reqNames = [...]string{
	ReqRead: "read", ReqWrite: "write", ReqFlush: "flush", ReqTrim: "trim", ReqZero: "zero",
	ReqFormat: "format", ReqCreateVDI: "create", ReqDeleteVDI: "delete", ReqResizeVDI: "resize",
	ReqAttach: "attach", ReqDetach: "detach", ReqShutdown: "shutdown", ReqCheck: "check", ReqMap: "map",
}

func (t ReqType) String() string {
	if t > 0 && t < reqTypeEnd {
		return reqNames[t]
	}
	return fmt.Sprintf("req(%d)", uint8(t))
}

// Request is a client or admin request. ID is the driver's and comes back
// in the Reply.
type Request struct {
	ID         uint64
	Type       ReqType
	VID        uint32
	Name       string
	Off        uint64
	Len        uint64
	Data       []byte
	FUA        bool
	NoHole     bool
	Size       uint64
	Copies     uint8
	BlockShift uint8
	Time       int64 // wall clock (unix seconds) for creation times
	Force      bool
}

// Reply answers a Request.
type Reply struct {
	ID   uint64
	Code Code
	Data []byte // ReqRead; ReqMap: one byte per object, 1 if it holds data
	VID  uint32
	Gen  uint64 // ReqAttach: attach generation

	Checked  uint64 // ReqCheck: objects verified
	Repaired uint64 // ReqCheck: replicas repaired
}

func (n *Node) request(r *Request) {
	switch r.Type {
	case ReqRead, ReqWrite, ReqTrim, ReqZero, ReqMap:
		n.clientIO(r)
	case ReqCheck:
		n.clientCheck(r)
	case ReqFlush:
		n.clientFlush(r)
	case ReqFormat:
		n.adminPropose(r, &Cmd{Type: CmdFormat, Copies: r.Copies, BlockShift: r.BlockShift, Time: r.Time})
	case ReqCreateVDI:
		n.adminPropose(r, &Cmd{Type: CmdVDICreate, Name: r.Name, Size: r.Size, Copies: r.Copies, BlockShift: r.BlockShift, Time: r.Time})
	case ReqDeleteVDI:
		n.adminPropose(r, &Cmd{Type: CmdVDIDelete, Name: r.Name, Force: r.Force, Time: r.Time})
	case ReqResizeVDI:
		n.adminPropose(r, &Cmd{Type: CmdVDIResize, Name: r.Name, Size: r.Size, Time: r.Time})
	case ReqAttach:
		n.propose(&Cmd{Type: CmdAttach, VID: r.VID, NodeID: n.id, Inc: n.self.Incarnation, Force: r.Force, Time: r.Time}, func(res Result) {
			if res.Code == OK {
				n.gw.attach(res.VID, res.Gen)
			}
			n.reply(Reply{ID: r.ID, Code: res.Code, VID: res.VID, Gen: res.Gen})
		})
	case ReqDetach:
		n.gw.detach(r.VID)
		n.adminPropose(r, &Cmd{Type: CmdDetach, VID: r.VID, NodeID: n.id, Inc: n.self.Incarnation, Time: r.Time})
	case ReqShutdown:
		n.adminPropose(r, &Cmd{Type: CmdShutdown, Time: r.Time})
	default:
		n.reply(Reply{ID: r.ID, Code: ErrInvalid})
	}
}

func (n *Node) adminPropose(r *Request, c *Cmd) {
	n.propose(c, func(res Result) {
		n.reply(Reply{ID: r.ID, Code: res.Code, VID: res.VID, Gen: res.Gen})
	})
}
