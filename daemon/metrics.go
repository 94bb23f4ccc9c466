package daemon

import (
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	sdnet "github.com/sheepdog-go/sheepdog/net"
)

// metrics are the node's Prometheus metrics; each daemon has its own
// registry (several run in one process with `sheepdog local`).
type metrics struct {
	reg         *prometheus.Registry
	ioRequests  *prometheus.CounterVec
	ioErrors    *prometheus.CounterVec
	ioBytes     *prometheus.CounterVec
	ioLatency   *prometheus.HistogramVec
	diskOps     *prometheus.CounterVec
	diskErrors  *prometheus.CounterVec
	readsCached prometheus.Counter
	runs        *prometheus.CounterVec
	msgsSent    prometheus.Counter
	msgsDropped prometheus.Counter
	epoch       prometheus.Gauge
	members     prometheus.Gauge
	recTotal    prometheus.Gauge
	recLeft     prometheus.Gauge
	recDone     prometheus.Gauge
	objects     prometheus.Gauge
	leader      prometheus.Gauge
	nbdRefused  *prometheus.CounterVec
	// transport is the node's peer and admin transport, once it listens.
	transport atomic.Pointer[sdnet.Transport]
}

// transportCollector exports counters the transport keeps.
type transportCollector struct {
	tr      *atomic.Pointer[sdnet.Transport]
	refused *prometheus.Desc
	capped  *prometheus.Desc
}

func (c transportCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.refused
	ch <- c.capped
}

func (c transportCollector) Collect(ch chan<- prometheus.Metric) {
	var s sdnet.Stats
	if tr := c.tr.Load(); tr != nil {
		s = tr.Stats()
	}
	for _, r := range sdnet.TLSRefusalReasons {
		ch <- prometheus.MustNewConstMetric(c.refused, prometheus.CounterValue, float64(s.TLSRefused[r]), r)
	}
	ch <- prometheus.MustNewConstMetric(c.capped, prometheus.CounterValue, float64(s.ConnsRefused))
}

// newMetrics makes the registry; status gives the node's latest snapshot,
// which the counters kept by the node are read from.
func newMetrics(status func() *Status, copied func() uint64, pacedSeconds func() float64) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	// fromStatus registers a counter the node keeps, read from its snapshot.
	fromStatus := func(name, help string, get func(*Status) uint64) {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 {
			if s := status(); s != nil {
				return float64(get(s))
			}
			return 0
		}))
	}
	fromStatus("sheepdog_gateway_reads_local_total",
		"Object reads this node served from its own replica as a VDI's attacher, without asking the primary.",
		func(s *Status) uint64 { return s.ReadsHere })
	fromStatus("sheepdog_gateway_direct_ops_total",
		"Object operations this node ran itself as a VDI's attacher, on objects their primaries handed over to it.",
		func(s *Status) uint64 { return s.DirectOps })
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sheepdog_recovery_copied_bytes_total",
		Help: "Bytes of objects copied from peers (recovery, catch-up, repair) and written here."}, func() float64 { return float64(copied()) }))
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sheepdog_recovery_paced_seconds_total",
		Help: "Seconds copies from peers waited for tokens of --recovery-rate or, while clients were busy, --recovery-busy-rate."}, func() float64 { return pacedSeconds() }))
	f(transportCollector{
		tr: &m.transport,
		refused: prometheus.NewDesc("sheepdog_tls_handshake_refused_total",
			"Peer and admin connections refused at the TLS handshake, by reason: no_cert (no client certificate), unknown_ca (a certificate of another CA), bad_cert (expired or not for client authentication), bad_version (not TLS 1.3), not_tls (no TLS at all), timeout, other.",
			[]string{"reason"}, nil),
		capped: prometheus.NewDesc("sheepdog_connections_refused_total",
			"Peer and admin connections closed at once because their IP address already had the most connections allowed (--max-conns-per-ip).", nil, nil),
	})
	m.ioRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sheepdog_io_requests_total", Help: "Front-end I/O requests by operation."}, []string{"op"})
	m.ioErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sheepdog_io_errors_total", Help: "Front-end I/O requests that failed, by operation and result."}, []string{"op", "code"})
	m.ioBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sheepdog_io_bytes_total", Help: "Bytes requested by front-end I/O, by operation."}, []string{"op"})
	m.ioLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "sheepdog_io_latency_seconds", Help: "Front-end I/O latency.",
		Buckets: prometheus.ExponentialBuckets(50e-6, 2, 18)}, []string{"op"})
	m.diskOps = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sheepdog_disk_operations_total", Help: "Local store operations."}, []string{"op"})
	m.diskErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sheepdog_disk_errors_total", Help: "Local store operations that failed."}, []string{"op", "code"})
	m.readsCached = prometheus.NewCounter(prometheus.CounterOpts{Name: "sheepdog_disk_reads_cached_total", Help: "Local reads served from the page cache while running the node, without a hand-off to a disk worker."})
	m.runs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sheepdog_node_runs_total",
		Help: "Batches of events the node ran, by who ran them: the goroutine that queued an event (caller, while at most one client request is in flight), the loop goroutine (loop, under load) or the loop goroutine on a timer tick (tick)."}, []string{"by"})
	m.msgsSent = prometheus.NewCounter(prometheus.CounterOpts{Name: "sheepdog_peer_messages_sent_total", Help: "Messages sent to peers."})
	m.msgsDropped = prometheus.NewCounter(prometheus.CounterOpts{Name: "sheepdog_peer_messages_dropped_total", Help: "Messages to peers dropped by back-pressure."})
	m.epoch = prometheus.NewGauge(prometheus.GaugeOpts{Name: "sheepdog_epoch", Help: "Current epoch."})
	m.members = prometheus.NewGauge(prometheus.GaugeOpts{Name: "sheepdog_members", Help: "Members of the current epoch."})
	m.recTotal = prometheus.NewGauge(prometheus.GaugeOpts{Name: "sheepdog_recovery_objects", Help: "Objects this node fetches in the current epoch's recovery."})
	m.recLeft = prometheus.NewGauge(prometheus.GaugeOpts{Name: "sheepdog_recovery_remaining_objects", Help: "Objects still to fetch."})
	m.recDone = prometheus.NewGauge(prometheus.GaugeOpts{Name: "sheepdog_recovery_finished", Help: "1 once this node recovered the current epoch."})
	m.objects = prometheus.NewGauge(prometheus.GaugeOpts{Name: "sheepdog_objects", Help: "Objects stored on this node."})
	m.leader = prometheus.NewGauge(prometheus.GaugeOpts{Name: "sheepdog_cluster_leader", Help: "1 if this node leads the cluster log."})
	m.nbdRefused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sheepdog_nbd_refused_total",
		Help: "NBD connections refused before transmission, by reason: tls-required (options before STARTTLS), tls-handshake (no or a bad client certificate), max-conns, timeout, protocol."}, []string{"reason"})
	for _, r := range []string{"tls-required", "tls-handshake", "max-conns", "timeout", "protocol"} {
		m.nbdRefused.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.nbdRefused, m.ioRequests, m.ioErrors, m.ioBytes, m.ioLatency, m.diskOps, m.diskErrors, m.readsCached, m.runs, m.msgsSent, m.msgsDropped,
		m.epoch, m.members, m.recTotal, m.recLeft, m.recDone, m.objects, m.leader,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		f(c)
	}
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
