package fhir

import (
	"net/url"
	"os"
	"testing"
	"time"
)

func benchExample(b *testing.B, name string) []byte {
	raw, err := os.ReadFile("../testdata/hl7-r4-examples/" + name)
	if err != nil {
		b.Fatal(err)
	}
	return raw
}

// BenchmarkParseResource is the cost of accepting a resource: parse and validate the official Patient example.
func BenchmarkParseResource(b *testing.B) {
	raw := benchExample(b, "patient-example.json")
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseResource(raw, "Patient"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExtractIndex is the cost of computing a resource's search index entries.
func BenchmarkExtractIndex(b *testing.B) {
	o, err := ParseResource(benchExample(b, "observation-example.json"), "")
	if err != nil {
		b.Fatal(err)
	}
	x := &Indexer{Base: "http://x/fhir", Loc: time.UTC}
	b.ReportAllocs()
	for b.Loop() {
		x.Extract(o)
	}
}

// BenchmarkParseQuery is the cost of parsing a typical patient-app search.
func BenchmarkParseQuery(b *testing.B) {
	v, _ := url.ParseQuery("patient=123&category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory&date=ge2024-01-01&_sort=-date&_count=50&_include=Observation:subject")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseQuery("Observation", v, QueryOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}
