package core

import "fmt"

// OID is a Sheepdog object id: bits 0-31 the object index within its VDI,
// bits 32-55 the 24-bit VDI id, and type bits at the top.
type OID uint64

// Object id layout, as in Sheepdog.
const (
	VDISpaceShift         = 32
	VDIBit            OID = 1 << 63 // inode object
	VMStateBit        OID = 1 << 62
	VDIAttrBit        OID = 1 << 61
	LedgerBit         OID = 1 << 59
	MaxVDIs               = 1 << 24
	MaxDataObjs           = 1 << 20 // objects per VDI
	DefaultBlockShift     = 22      // 4 MiB objects
	MinBlockShift         = 9       // the simulator uses tiny objects
	MaxBlockShift         = 31
)

// DataOID is the id of data object idx of VDI vid.
func DataOID(vid uint32, idx uint32) OID { return OID(uint64(vid)<<VDISpaceShift | uint64(idx)) }

// InodeOID is the id of VDI vid's inode object.
func InodeOID(vid uint32) OID { return VDIBit | OID(uint64(vid)<<VDISpaceShift) }

// VID is the VDI id the object belongs to.
func (o OID) VID() uint32 {
	return uint32((uint64(o) &^ uint64(VDIBit|VMStateBit|VDIAttrBit|LedgerBit)) >> VDISpaceShift & (MaxVDIs - 1))
}

// Index is the object's index within its VDI (data objects).
func (o OID) Index() uint32 { return uint32(o) }

// IsData reports whether o is a data object.
func (o OID) IsData() bool { return o&(VDIBit|VMStateBit|VDIAttrBit|LedgerBit) == 0 }

// String prints the id as Sheepdog does (%016x).
func (o OID) String() string { return fmt.Sprintf("%016x", uint64(o)) }
