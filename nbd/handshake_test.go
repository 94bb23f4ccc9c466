package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// newHandshakeServer serves "disk" (1 MiB, with a description), "ro"
// (read-only) and "other".
func newHandshakeServer(t *testing.T) (string, *MemBackend) {
	t.Helper()
	mb := NewMemBackend()
	mb.Add("disk", 1<<20).SetDescription("the test disk")
	mb.Add("ro", 64<<10).SetReadOnly(true)
	mb.Add("other", 4096)
	return startServer(t, &Server{Backend: mb}), mb
}

func wantOptError(t *testing.T, err error, typ uint32, msgContains string) {
	t.Helper()
	var oe *optError
	if !errors.As(err, &oe) {
		t.Fatalf("got %v, want option error %#x", err, typ)
	}
	if oe.typ != typ || !strings.Contains(oe.msg, msgContains) {
		t.Fatalf("got option error %#x %q, want %#x containing %q", oe.typ, oe.msg, typ, msgContains)
	}
}

// TestHandshakeRejects covers violations that must end the session with a
// hard disconnect.
func TestHandshakeRejects(t *testing.T) {
	addr, _ := newHandshakeServer(t)
	tests := []struct {
		name string
		run  func(c *testClient)
	}{
		{"client without FIXED_NEWSTYLE", func(c *testClient) { c.clientFlags(0) }},
		{"client with only NO_ZEROES", func(c *testClient) { c.clientFlags(clientFlagNoZeroes) }},
		{"unknown client flag", func(c *testClient) { c.clientFlags(clientFlagFixedNewstyle | 1<<5) }},
		{"bad option magic", func(c *testClient) {
			c.clientFlags(clientFlagFixedNewstyle)
			c.write(requestBytes(magicRequest, 0, 0, 0, 0, 0)) // a request instead of an option
		}},
		{"EXPORT_NAME of unknown export", func(c *testClient) {
			c.clientFlags(clientFlagFixedNewstyle)
			c.sendOption(optExportName, []byte("nope"))
		}},
		{"EXPORT_NAME with NUL in name", func(c *testClient) {
			c.clientFlags(clientFlagFixedNewstyle)
			c.sendOption(optExportName, []byte("di\x00sk"))
		}},
		{"option data beyond discard limit", func(c *testClient) {
			c.clientFlags(clientFlagFixedNewstyle)
			c.sendOptionClosing(optList, make([]byte, maxOptionDiscard+1))
		}},
		{"EXPORT_NAME beyond option limit", func(c *testClient) {
			c.clientFlags(clientFlagFixedNewstyle)
			c.sendOptionClosing(optExportName, make([]byte, maxOptionLength+1))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, addr)
			tt.run(c)
			c.expectClosed()
		})
	}
	// The server is still serving.
	c := connect(t, addr, "disk", true, false)
	c.read(0, 512)
}

// TestHandshakeOptions covers option replies; after each case the same
// connection must still negotiate successfully.
func TestHandshakeOptions(t *testing.T) {
	addr, _ := newHandshakeServer(t)
	tests := []struct {
		name string
		run  func(t *testing.T, c *testClient)
	}{
		{"unknown option", func(t *testing.T, c *testClient) {
			_, err := c.option(99, []byte("whatever"))
			wantOptError(t, err, repErrUnsup, "not supported")
		}},
		{"STARTTLS without TLS configured", func(t *testing.T, c *testClient) {
			_, err := c.option(optStartTLS, nil)
			wantOptError(t, err, repErrPolicy, "not configured")
		}},
		{"oversized unknown option is skipped", func(t *testing.T, c *testClient) {
			_, err := c.option(1000, make([]byte, maxOptionLength+1))
			wantOptError(t, err, repErrUnsup, "exceeds")
		}},
		{"oversized known option is too big", func(t *testing.T, c *testClient) {
			_, err := c.option(optInfo, make([]byte, maxOptionLength+1))
			wantOptError(t, err, repErrTooBig, "exceeds")
		}},
		{"LIST with data", func(t *testing.T, c *testClient) {
			_, err := c.option(optList, []byte{0})
			wantOptError(t, err, repErrInvalid, "no data")
		}},
		{"LIST", func(t *testing.T, c *testClient) {
			rs, err := c.option(optList, nil)
			if err != nil {
				t.Fatal(err)
			}
			var got []Export
			for _, r := range rs {
				if r.typ != repServer {
					t.Fatalf("reply type %d", r.typ)
				}
				n := binary.BigEndian.Uint32(r.data)
				got = append(got, Export{Name: string(r.data[4 : 4+n]), Description: string(r.data[4+n:])})
			}
			want := []Export{{Name: "disk", Description: "the test disk"}, {Name: "other"}, {Name: "ro"}}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("exports (-want +got):\n%s", diff)
			}
		}},
		{"STRUCTURED_REPLY with data", func(t *testing.T, c *testClient) {
			_, err := c.option(optStructuredReply, []byte{1})
			wantOptError(t, err, repErrInvalid, "no data")
		}},
		{"SET_META_CONTEXT before STRUCTURED_REPLY", func(t *testing.T, c *testClient) {
			_, err := c.option(optSetMetaContext, metaRequest("disk", metaContextBaseAllocation))
			wantOptError(t, err, repErrInvalid, "STRUCTURED_REPLY")
		}},
		{"INFO of unknown export", func(t *testing.T, c *testClient) {
			_, err := c.info(optInfo, "nope")
			wantOptError(t, err, repErrUnknown, `"nope"`)
		}},
		{"GO of unknown export", func(t *testing.T, c *testClient) {
			_, err := c.info(optGo, "nope", infoBlockSize)
			wantOptError(t, err, repErrUnknown, "unknown export")
		}},
		{"INFO shorter than 6 bytes", func(t *testing.T, c *testClient) {
			_, err := c.option(optInfo, []byte{0, 0, 0, 0, 0})
			wantOptError(t, err, repErrInvalid, "malformed")
		}},
		{"INFO name length beyond data", func(t *testing.T, c *testClient) {
			b := infoRequest("disk")
			binary.BigEndian.PutUint32(b, 100)
			_, err := c.option(optInfo, b)
			wantOptError(t, err, repErrInvalid, "malformed")
		}},
		{"INFO trailing data", func(t *testing.T, c *testClient) {
			_, err := c.option(optInfo, append(infoRequest("disk", infoName), 0))
			wantOptError(t, err, repErrInvalid, "malformed")
		}},
		{"INFO name not UTF-8", func(t *testing.T, c *testClient) {
			_, err := c.option(optGo, infoRequest("\xff\xfe"))
			wantOptError(t, err, repErrInvalid, "name")
		}},
		{"INFO", func(t *testing.T, c *testClient) {
			infos, err := c.info(optInfo, "disk", infoName, infoDescription, infoBlockSize, 77)
			if err != nil {
				t.Fatal(err)
			}
			want := map[uint16][]byte{
				infoExport:      append(binary.BigEndian.AppendUint64(nil, 1<<20), 0x08, 0x6d),
				infoName:        []byte("disk"),
				infoDescription: []byte("the test disk"),
				infoBlockSize:   {0, 0, 0, 1, 0, 0, 0x10, 0, 0x02, 0, 0, 0},
			}
			if diff := cmp.Diff(want, infos); diff != "" {
				t.Errorf("infos (-want +got):\n%s", diff)
			}
		}},
		{"INFO does not keep the export attached", func(t *testing.T, c *testClient) {
			if _, err := c.info(optInfo, "other"); err != nil {
				t.Fatal(err)
			}
			o := connect(t, addr, "other", false, false)
			o.disconnect()
		}},
		{"LIST_META_CONTEXT", func(t *testing.T, c *testClient) {
			type ctx struct {
				ID   uint32
				Name string
			}
			for _, q := range [][]string{nil, {"base:"}, {"base:allocation", "x-foo:bar"}, {"x-foo:"}, {"base:nothing"}} {
				rs, err := c.option(optListMetaContext, metaRequest("disk", q...))
				if err != nil {
					t.Fatalf("queries %q: %v", q, err)
				}
				var got []ctx
				for _, r := range rs {
					got = append(got, ctx{binary.BigEndian.Uint32(r.data), string(r.data[4:])})
				}
				var want []ctx
				if len(q) == 0 || q[0] == "base:" || q[0] == metaContextBaseAllocation {
					want = []ctx{{0, metaContextBaseAllocation}}
				}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("queries %q (-want +got):\n%s", q, diff)
				}
			}
		}},
		{"SET_META_CONTEXT", func(t *testing.T, c *testClient) {
			if _, err := c.option(optStructuredReply, nil); err != nil {
				t.Fatal(err)
			}
			c.structured = true
			rs, err := c.option(optSetMetaContext, metaRequest("disk", "base:", "qemu:dirty-bitmap:x", metaContextBaseAllocation, metaContextBaseAllocation))
			if err != nil {
				t.Fatal(err)
			}
			if len(rs) != 1 || rs[0].typ != repMetaContext || string(rs[0].data[4:]) != metaContextBaseAllocation ||
				binary.BigEndian.Uint32(rs[0].data) == 0 {
				t.Fatalf("replies %+v, want one base:allocation context with a nonzero id", rs)
			}
		}},
		{"META_CONTEXT malformed", func(t *testing.T, c *testClient) {
			b := metaRequest("disk", "base:allocation")
			binary.BigEndian.PutUint32(b[8:], 1000) // query count
			_, err := c.option(optListMetaContext, b)
			wantOptError(t, err, repErrInvalid, "malformed")
			_, err = c.option(optListMetaContext, append(metaRequest("disk"), 0))
			wantOptError(t, err, repErrInvalid, "malformed")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, addr)
			c.clientFlags(clientFlagFixedNewstyle | clientFlagNoZeroes)
			tt.run(t, c)
			if err := c.negotiate("disk", c.structured, false); err != nil {
				t.Fatalf("negotiating after the option: %v", err)
			}
			c.read(0, 4096)
			c.disconnect()
		})
	}
}

func TestHandshakeAbort(t *testing.T) {
	addr, _ := newHandshakeServer(t)
	c := dial(t, addr)
	c.clientFlags(clientFlagFixedNewstyle)
	if _, err := c.option(optAbort, make([]byte, maxOptionLength+1)); err != nil { // data is ignored
		t.Fatalf("NBD_OPT_ABORT: %v", err)
	}
	c.expectClosed()
}

// TestExportName covers NBD_OPT_EXPORT_NAME with and without the 124
// zero bytes.
func TestExportName(t *testing.T) {
	addr, mb := newHandshakeServer(t)
	vol := mb.Add("data", 8192)
	vol.WriteAt(t.Context(), bytes.Repeat([]byte{7}, 8192), 0, false)
	for _, noZeroes := range []bool{false, true} {
		c := dial(t, addr)
		flags := clientFlagFixedNewstyle
		if noZeroes {
			flags |= clientFlagNoZeroes
		}
		c.clientFlags(flags)
		c.sendOption(optExportName, []byte("data"))
		n := 134
		if noZeroes {
			n = 10
		}
		got := make([]byte, n)
		if _, err := io.ReadFull(c.br, got); err != nil {
			t.Fatal(err)
		}
		want := make([]byte, n)
		binary.BigEndian.PutUint64(want, 8192)
		binary.BigEndian.PutUint16(want[8:], 0x086d)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("noZeroes=%v: reply (-want +got):\n%s", noZeroes, diff)
		}
		if diff := cmp.Diff(bytes.Repeat([]byte{7}, 512), c.read(512, 512)); diff != "" {
			t.Errorf("read (-want +got):\n%s", diff)
		}
		c.disconnect()
	}
}

// TestTransmissionFlags checks the flags announced by NBD_OPT_GO.
func TestTransmissionFlags(t *testing.T) {
	addr, _ := newHandshakeServer(t)
	const base = tflagHasFlags | tflagSendFlush | tflagSendFUA | tflagSendTrim | tflagSendWriteZeroes | tflagSendFastZero
	tests := []struct {
		export     string
		structured bool
		want       uint16
	}{
		{"disk", false, base},
		{"disk", true, base | tflagSendDF},
		{"ro", false, base | tflagReadOnly},
		{"ro", true, base | tflagSendDF | tflagReadOnly},
	}
	for _, tt := range tests {
		c := connect(t, addr, tt.export, tt.structured, false)
		if c.flags != tt.want || c.flags&tflagCanMultiConn != 0 {
			t.Errorf("%s structured=%v: flags %#x, want %#x", tt.export, tt.structured, c.flags, tt.want)
		}
		c.disconnect()
	}
}

// TestBusy: a second attach of an export is refused with a message saying
// the VDI is attached elsewhere, while the first attachment keeps working.
func TestBusy(t *testing.T) {
	mb := NewMemBackend()
	mb.Add("vdi", 1<<20)
	addr := startServer(t, &Server{Backend: mb})

	first := connect(t, addr, "vdi", true, true)
	first.writeAt(bytes.Repeat([]byte{1}, 4096), 0)

	second := dial(t, addr)
	second.clientFlags(clientFlagFixedNewstyle | clientFlagNoZeroes)
	for _, opt := range []uint32{optGo, optInfo} {
		_, err := second.info(opt, "vdi", infoBlockSize)
		wantOptError(t, err, repErrPolicy, "attached elsewhere")
	}
	// The refused client may go on negotiating.
	if _, err := second.option(optList, nil); err != nil {
		t.Fatalf("NBD_OPT_LIST after refusal: %v", err)
	}

	if diff := cmp.Diff(bytes.Repeat([]byte{1}, 4096), first.read(0, 4096)); diff != "" {
		t.Errorf("first client read (-want +got):\n%s", diff)
	}
	first.disconnect()

	// Detached now: the waiting client gets it.
	if err := second.negotiate("vdi", false, false); err != nil {
		t.Fatalf("attach after detach: %v", err)
	}
	second.read(0, 4096)
	second.disconnect()
}
