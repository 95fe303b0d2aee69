package conformance

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"strings"
)

// Summary is the last line a run prints: N passed, N failed, N skipped (errors count as failed; omitted tests are
// not counted).
func (r *Report) Summary() string {
	return fmt.Sprintf("%d passed, %d failed, %d skipped", r.Passed, r.Failed, r.Skipped)
}

// WriteText writes the report for people: each group with its outcome, each test, and for the tests that did not
// pass, their messages, the requirement and the HTTP exchanges that decided it.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Conformance of %s (%s, %.1f s)\n", r.Base, r.Started.Format("2006-01-02 15:04:05 UTC"), r.Duration)
	for _, g := range r.Groups {
		fmt.Fprintf(&b, "\n%s  %s (%s)\n", label(g.Status), g.Title, g.ID)
		for _, t := range g.Results {
			opt := ""
			if t.Optional {
				opt = " (optional)"
			}
			fmt.Fprintf(&b, "  %s  %-32s %s%s\n", label(t.Status), t.ID, t.Title, opt)
			if t.Status == Pass {
				continue
			}
			for _, m := range t.Messages {
				fmt.Fprintf(&b, "        %s\n", indent(m, "        "))
			}
			if t.Status == Fail || t.Status == Error {
				fmt.Fprintf(&b, "        requirement: %s\n", t.Requirement)
				for _, e := range t.Exchanges {
					fmt.Fprintf(&b, "        %s %s → %d\n", e.Method, e.URL, e.Status)
					if e.Status >= 400 && e.ResponseBody != "" {
						body := e.ResponseBody
						if len(body) > 300 {
							body = body[:300] + "…"
						}
						fmt.Fprintf(&b, "          %s\n", body)
					}
				}
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func label(s Status) string {
	switch s {
	case Fail:
		return "FAIL "
	case Error:
		return "ERROR"
	case Skip:
		return "skip "
	case Omit:
		return "omit "
	}
	return "pass "
}

func indent(s, pad string) string { return strings.ReplaceAll(s, "\n", "\n"+pad) }

// WriteJSON writes the report as JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Name     string       `xml:"name,attr"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Errors   int          `xml:"errors,attr"`
	Skipped  int          `xml:"skipped,attr"`
	Time     float64      `xml:"time,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name     string      `xml:"name,attr"`
	ID       string      `xml:"id,attr"`
	Tests    int         `xml:"tests,attr"`
	Failures int         `xml:"failures,attr"`
	Errors   int         `xml:"errors,attr"`
	Skipped  int         `xml:"skipped,attr"`
	Time     float64     `xml:"time,attr"`
	Cases    []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	Time      float64       `xml:"time,attr"`
	Failure   *junitMessage `xml:"failure,omitempty"`
	Error     *junitMessage `xml:"error,omitempty"`
	Skipped   *junitMessage `xml:"skipped,omitempty"`
	SystemOut string        `xml:"system-out,omitempty"`
}

type junitMessage struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr,omitempty"`
	Text    string `xml:",chardata"`
}

// WriteJUnit writes the report as JUnit XML (groups as test suites); omitted tests are skipped ones whose
// message says they do not apply.
func (r *Report) WriteJUnit(w io.Writer) error {
	out := junitSuites{Name: "carta conformance " + r.Base, Time: r.Duration}
	for _, g := range r.Groups {
		s := junitSuite{Name: g.Title, ID: g.ID}
		for _, t := range g.Results {
			c := junitCase{Name: t.ID + ": " + t.Title, Classname: "conformance." + g.ID, Time: t.Duration}
			detail := strings.Join(t.Messages, "\n")
			var ex []string
			for _, e := range t.Exchanges {
				ex = append(ex, fmt.Sprintf("%s %s → %d", e.Method, e.URL, e.Status))
			}
			full := detail + "\nrequirement: " + t.Requirement
			if len(ex) > 0 {
				full += "\n" + strings.Join(ex, "\n")
			}
			switch t.Status {
			case Fail:
				typ := "required"
				if t.Optional {
					typ = "optional"
				}
				c.Failure = &junitMessage{Message: first(t.Messages), Type: typ, Text: full}
				s.Failures++
			case Error:
				c.Error = &junitMessage{Message: first(t.Messages), Text: full}
				s.Errors++
			case Skip:
				c.Skipped = &junitMessage{Message: first(t.Messages)}
				s.Skipped++
			case Omit:
				c.Skipped = &junitMessage{Message: "not applicable: " + first(t.Messages)}
				s.Skipped++
			}
			s.Tests++
			s.Time += t.Duration
			s.Cases = append(s.Cases, c)
		}
		out.Tests += s.Tests
		out.Failures += s.Failures
		out.Errors += s.Errors
		out.Skipped += s.Skipped
		out.Suites = append(out.Suites, s)
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(out); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}

func first(l []string) string {
	if len(l) == 0 {
		return ""
	}
	return l[0]
}

// List writes one line per test: ID<TAB>GROUP<TAB>TITLE.
func (s *Suite) List(w io.Writer) error {
	var b strings.Builder
	for _, g := range s.Groups {
		for _, t := range g.Tests {
			fmt.Fprintf(&b, "%s\t%s\t%s\n", t.ID, g.ID, t.Title)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
