package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"
)

// job is one fio workload.
type job struct {
	ID      string // stable key (JSON, file names)
	Title   string // for people
	RW      string // fio --rw
	BS      string // fio --bs
	QD      int    // fio --iodepth
	Read    bool   // results are in fio's "read" section (else "write")
	Latency bool   // a latency job: the report adds latency ratios
	ByBW    bool   // compared by bandwidth rather than IOPS (same ratio, clearer unit)
	Fsync   bool   // fio --fsync=1: every write is followed by an NBD FLUSH
	Fresh   bool   // measured by the fresh phase (fresh.go), not by measure
	Tool    bool   // a qemu-img job: only its bandwidth is known
}

// jobs are measured in this order.
var jobs = []job{
	{ID: "randwrite-4k-qd32", Title: "4K randwrite QD32", RW: "randwrite", BS: "4k", QD: 32},
	{ID: "randwrite-4k-qd1", Title: "4K randwrite QD1", RW: "randwrite", BS: "4k", QD: 1, Latency: true},
	{ID: "randread-4k-qd32", Title: "4K randread QD32", RW: "randread", BS: "4k", QD: 32, Read: true},
	{ID: "write-1m-qd8", Title: "1M seq write QD8", RW: "write", BS: "1M", QD: 8, ByBW: true},
	{ID: "read-1m-qd8", Title: "1M seq read QD8", RW: "read", BS: "1M", QD: 8, Read: true, ByBW: true},
	// What a database in the guest does: its IOPS are write+flush pairs
	// per second (fio's runtime includes the flushes).
	{ID: "writeflush-4k-qd1", Title: "4K write+flush QD1", RW: "randwrite", BS: "4k", QD: 1, Fsync: true},
	// The fresh phase: a user's first writes, into never-written space.
	freshJob,
	{ID: "import-qemu-img", Title: "qemu-img convert in", ByBW: true, Fresh: true, Tool: true},
	{ID: "export-qemu-img", Title: "qemu-img convert out", Read: true, ByBW: true, Fresh: true, Tool: true},
}

// freshJob writes a never-written device once, sequentially: it is not
// time-based, since a second pass would overwrite.
var freshJob = job{ID: "fresh-write-1m-qd8", Title: "1M fresh write QD8", RW: "write", BS: "1M", QD: 8, ByBW: true, Fresh: true}

// prefillJob writes the working set once before anything is measured.
var prefillJob = job{ID: "prefill", Title: "prefill", RW: "write", BS: "1M", QD: 8}

func jobByID(id string) job {
	for _, j := range jobs {
		if j.ID == id {
			return j
		}
	}
	panic("unknown job " + id)
}

// sample is the result of one fio run.
type sample struct {
	IOPS     float64 `json:"iops"`
	BW       float64 `json:"bw_bytes_per_s"`
	ClatMean float64 `json:"clat_mean_ns"`
	ClatP99  float64 `json:"clat_p99_ns"`
	IOs      int64   `json:"ios"`
}

// fioArgs is the fio command line for j against uri.
func fioArgs(cfg *config, uri string, j job, timed bool, out string) []string {
	args := []string{cfg.fio,
		"--name=" + j.ID,
		"--ioengine=nbd",
		"--uri=" + uri,
		"--rw=" + j.RW,
		"--bs=" + j.BS,
		fmt.Sprintf("--iodepth=%d", j.QD),
		fmt.Sprintf("--size=%d", cfg.workingSet),
		"--output-format=json",
		"--output=" + out,
	}
	if j.Fsync {
		args = append(args, "--fsync=1")
	}
	if timed {
		args = append(args, "--time_based",
			fmt.Sprintf("--runtime=%dms", cfg.runtime.Milliseconds()),
			fmt.Sprintf("--ramp_time=%dms", cfg.ramp.Milliseconds()))
	}
	return args
}

// busyRetry is how long runFio retries a refused NBD connection: a VDI
// takes one attacher at a time and the previous run's detach may lag.
const busyRetry = 10 * time.Second

// runFio runs j against uri, writing fio's JSON to out, and parses it.
func runFio(ctx context.Context, cfg *config, uri string, j job, timed bool, out string) (sample, error) {
	uri, wrap, err := libnbdCertificates(uri) // nbds:// with a client certificate
	if err != nil {
		return sample{}, err
	}
	argv := wrap(fioArgs(cfg, uri, j, timed, out))
	deadline := time.Now().Add(busyRetry)
	for {
		_, errOut, err := command(ctx, argv...)
		if ctx.Err() != nil {
			return sample{}, ctx.Err()
		}
		if err == nil {
			return parseFio(out, j)
		}
		msg := strings.TrimSpace(string(errOut))
		if strings.Contains(msg, "nbd_connect") && time.Now().Before(deadline) {
			time.Sleep(300 * time.Millisecond)
			continue
		}
		return sample{}, fmt.Errorf("`%s`: %w: %s", strings.Join(argv, " "), err, msg)
	}
}

// fioDir is one direction (read or write) of a fio job's JSON results.
type fioDir struct {
	IOPS     float64 `json:"iops"`
	BWBytes  float64 `json:"bw_bytes"`
	TotalIOs int64   `json:"total_ios"`
	Clat     struct {
		Mean       float64            `json:"mean"`
		Percentile map[string]float64 `json:"percentile"`
	} `json:"clat_ns"`
}

// parseFio reads fio's --output-format=json file.
func parseFio(path string, j job) (sample, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return sample{}, err
	}
	// Some ioengines print a line before the JSON; start at the object.
	if i := bytes.IndexByte(b, '{'); i > 0 {
		b = b[i:]
	}
	var out struct {
		Jobs []struct {
			Error int    `json:"error"`
			Read  fioDir `json:"read"`
			Write fioDir `json:"write"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return sample{}, fmt.Errorf("parsing fio output %s: %w", path, err)
	}
	if len(out.Jobs) != 1 {
		return sample{}, fmt.Errorf("fio output %s: %d jobs, want 1", path, len(out.Jobs))
	}
	fj := out.Jobs[0]
	if fj.Error != 0 {
		return sample{}, fmt.Errorf("fio output %s: job error %d", path, fj.Error)
	}
	d := fj.Write
	if j.Read {
		d = fj.Read
	}
	p99, ok := d.Clat.Percentile["99.000000"]
	if d.TotalIOs == 0 || !ok {
		return sample{}, fmt.Errorf("fio output %s: no I/O or no p99 latency recorded", path)
	}
	return sample{IOPS: d.IOPS, BW: d.BWBytes, ClatMean: d.Clat.Mean, ClatP99: p99, IOs: d.TotalIOs}, nil
}
