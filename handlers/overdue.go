package handlers

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"sort"
	"strconv"

	"github.com/carta-fhir/carta/fhir"
	"github.com/carta-fhir/carta/fhir/rights"
	"github.com/carta-fhir/carta/store"
	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// OverdueRequest is an open request past its due date.
type OverdueRequest struct {
	Task     string `json:"task"`
	Type     string `json:"type"`
	Patient  string `json:"patient"`
	Status   string `json:"status"`
	Due      string `json:"due"`
	DaysLate int    `json:"daysLate"`
}

// Overdue lists the open requests (ready or in-progress) whose due date is before today:
// GET /fhir/Task?due-date=lt{today}&status=ready,in-progress, with every page.
func Overdue(ctx context.Context, st *store.Store, today rights.Date) ([]OverdueRequest, error) {
	vals := url.Values{"due-date": {"lt" + today.String()}, "status": {"ready,in-progress"}, "_count": {"1000"}, "_sort": {"due-date"}}
	var out []OverdueRequest
	for {
		q, err := fhir.ParseQuery("Task", vals, fhir.QueryOptions{})
		if err != nil {
			return nil, err
		}
		pg, err := st.Search(ctx, q, nil)
		if err != nil {
			return nil, err
		}
		for _, m := range pg.Matches {
			t, err := fhir.ParseResource(m.Raw, "Task")
			if err != nil {
				continue
			}
			o := rights.Describe(t)
			due, err := rights.ParseDate(o.Due)
			if err != nil {
				continue
			}
			out = append(out, OverdueRequest{Task: "Task/" + m.ID, Type: o.Type, Patient: o.Patient, Status: o.Status, Due: o.Due, DaysLate: due.DaysUntil(today)})
		}
		if pg.Next == "" {
			return out, nil
		}
		vals.Set("_cursor", pg.Next)
	}
}

// rightsCollector exports the overdue requests as a Prometheus gauge, counted at each scrape.
type rightsCollector struct {
	s       *Server
	overdue *prometheus.Desc
}

func newRightsCollector(s *Server) *rightsCollector {
	return &rightsCollector{s: s, overdue: prometheus.NewDesc("carta_rights_overdue_requests",
		"Open patient-rights requests (access, amendment, accounting, review) past their legal due date.", []string{"type"}, nil)}
}

func (c *rightsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.overdue }

func (c *rightsCollector) Collect(ch chan<- prometheus.Metric) {
	list, err := Overdue(context.Background(), c.s.store, rights.DateOf(c.s.rights.Now(), c.s.rights.Loc))
	if err != nil {
		c.s.log.Error("counting overdue requests", "err", err)
		return
	}
	counts := map[string]int{}
	for _, t := range []string{rights.CodeAccessCopy, rights.CodeAccessInspect, rights.CodeAccessDirected, rights.CodeAccounting, rights.CodeDenialReview, rights.CodeCorrectionRequest} {
		counts[t] = 0
	}
	for _, o := range list {
		counts[o.Type]++
	}
	for t, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.overdue, prometheus.GaugeValue, float64(n), t)
	}
}

// metrics serves Prometheus metrics: the Go runtime and process, and the overdue patient-rights requests.
func (s *Server) metrics(c *gin.Context) {
	s.metricsOnce.Do(func() {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), newRightsCollector(s))
		s.metricsHandler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	})
	s.metricsHandler.ServeHTTP(c.Writer, c.Request)
}

// deadlines answers GET /fhir/Task/$deadlines: the jurisdiction profiles in force and their clocks, as
// Parameters, so that a client can see how due dates are computed.
func (s *Server) deadlines(c *gin.Context) {
	var ps []any
	ps = append(ps, param("timeZone", "valueCode", s.rights.Loc.String()))
	for _, p := range s.rights.Profiles {
		parts := []any{param("code", "valueCode", p.Code), param("title", "valueString", p.Title)}
		if p.Source != "" {
			parts = append(parts, param("source", "valueString", p.Source))
		}
		codes := make([]string, 0, len(p.Clocks))
		for code := range p.Clocks {
			codes = append(codes, code)
		}
		sort.Strings(codes)
		for _, code := range codes {
			ck := p.Clocks[code]
			unit := "calendar-days"
			if ck.BusinessDays {
				unit = "business-days"
			}
			clock := []any{param("request", "valueCode", code), param("days", "valueInteger", json.Number(strconv.Itoa(ck.Days))), param("unit", "valueCode", unit)}
			if ck.MaxExtensions > 0 {
				clock = append(clock, param("extensionDays", "valueInteger", json.Number(strconv.Itoa(ck.ExtensionDays))),
					param("maxExtensions", "valueInteger", json.Number(strconv.Itoa(ck.MaxExtensions))))
			} else {
				clock = append(clock, param("maxExtensions", "valueInteger", json.Number("0")))
			}
			if ck.ElectronicOnly {
				clock = append(clock, param("electronicOnly", "valueBoolean", true))
			}
			parts = append(parts, &fhir.Object{Keys: []string{"name", "part"}, Vals: []any{"clock", clock}})
		}
		if p.FederalHolidays || len(p.Holidays) > 0 {
			desc := "weekends"
			if p.FederalHolidays {
				desc += ", US federal holidays"
			}
			for _, h := range p.Holidays {
				desc += ", " + h.String()
			}
			parts = append(parts, param("nonBusinessDays", "valueString", desc))
		}
		ps = append(ps, &fhir.Object{Keys: []string{"name", "part"}, Vals: []any{"profile", parts}})
	}
	o := &fhir.Object{Keys: []string{"resourceType", "parameter"}, Vals: []any{"Parameters", ps}}
	s.writeJSON(c, http.StatusOK, fhir.AppendJSON(nil, o))
}

func param(name, key string, v any) *fhir.Object {
	return &fhir.Object{Keys: []string{"name", key}, Vals: []any{name, v}}
}
