package fhir

import (
	"strconv"
	"time"

	"github.com/google/uuid"
)

// BundleWriter builds a Bundle by appending bytes: stored resources go in as they are stored, never decoded and
// re-encoded, which keeps searches fast and keeps every resource exactly as served by read.
type BundleWriter struct {
	buf     []byte
	entries int
}

// NewBundle starts a Bundle of the given type. total < 0 leaves Bundle.total out.
func NewBundle(typ string, total int, links [][2]string) *BundleWriter {
	b := &BundleWriter{buf: make([]byte, 0, 4096)}
	b.buf = append(b.buf, `{"resourceType":"Bundle","id":`...)
	b.buf = appendString(b.buf, uuid.NewString())
	b.buf = append(b.buf, `,"meta":{"lastUpdated":`...)
	b.buf = appendString(b.buf, FormatInstant(time.Now()))
	b.buf = append(b.buf, `},"type":`...)
	b.buf = appendString(b.buf, typ)
	if total >= 0 {
		b.buf = append(b.buf, `,"total":`...)
		b.buf = strconv.AppendInt(b.buf, int64(total), 10)
	}
	if len(links) > 0 {
		b.buf = append(b.buf, `,"link":[`...)
		for i, l := range links {
			if i > 0 {
				b.buf = append(b.buf, ',')
			}
			b.buf = append(b.buf, `{"relation":`...)
			b.buf = appendString(b.buf, l[0])
			b.buf = append(b.buf, `,"url":`...)
			b.buf = appendString(b.buf, l[1])
			b.buf = append(b.buf, '}')
		}
		b.buf = append(b.buf, ']')
	}
	return b
}

// Entry is one Bundle entry. Raw is the resource JSON (nil for none); the other parts are optional.
type Entry struct {
	FullURL    string
	Raw        []byte
	SearchMode string // match, include, outcome
	// Request (history bundles)
	Method, URL string
	// Response (history, batch and transaction responses)
	Status       string
	Location     string
	ETag         string
	LastModified time.Time
	Outcome      []byte
}

// Add appends an entry.
func (b *BundleWriter) Add(e Entry) {
	if b.entries == 0 {
		b.buf = append(b.buf, `,"entry":[`...)
	} else {
		b.buf = append(b.buf, ',')
	}
	b.entries++
	b.buf = append(b.buf, '{')
	sep := false
	field := func(name string) {
		if sep {
			b.buf = append(b.buf, ',')
		}
		sep = true
		b.buf = append(b.buf, '"')
		b.buf = append(b.buf, name...)
		b.buf = append(b.buf, `":`...)
	}
	if e.FullURL != "" {
		field("fullUrl")
		b.buf = appendString(b.buf, e.FullURL)
	}
	if e.Raw != nil {
		field("resource")
		b.buf = append(b.buf, e.Raw...)
	}
	if e.SearchMode != "" {
		field("search")
		b.buf = append(b.buf, `{"mode":`...)
		b.buf = appendString(b.buf, e.SearchMode)
		b.buf = append(b.buf, '}')
	}
	if e.Method != "" {
		field("request")
		b.buf = append(b.buf, `{"method":`...)
		b.buf = appendString(b.buf, e.Method)
		b.buf = append(b.buf, `,"url":`...)
		b.buf = appendString(b.buf, e.URL)
		b.buf = append(b.buf, '}')
	}
	if e.Status != "" {
		field("response")
		b.buf = append(b.buf, `{"status":`...)
		b.buf = appendString(b.buf, e.Status)
		if e.Location != "" {
			b.buf = append(b.buf, `,"location":`...)
			b.buf = appendString(b.buf, e.Location)
		}
		if e.ETag != "" {
			b.buf = append(b.buf, `,"etag":`...)
			b.buf = appendString(b.buf, e.ETag)
		}
		if !e.LastModified.IsZero() {
			b.buf = append(b.buf, `,"lastModified":`...)
			b.buf = appendString(b.buf, FormatInstant(e.LastModified))
		}
		if e.Outcome != nil {
			b.buf = append(b.buf, `,"outcome":`...)
			b.buf = append(b.buf, e.Outcome...)
		}
		b.buf = append(b.buf, '}')
	}
	b.buf = append(b.buf, '}')
}

// Bytes finishes the Bundle and returns its JSON.
func (b *BundleWriter) Bytes() []byte {
	if b.entries > 0 {
		b.buf = append(b.buf, ']')
	}
	return append(b.buf, '}')
}
