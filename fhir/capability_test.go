package fhir

import (
	"testing"
	"time"
)

func TestCapabilityStatementIsValidR4(t *testing.T) {
	b, err := CapabilityStatement(Capabilities{Base: "http://x/fhir", Software: "Carta", Version: "test", Date: time.Now(), Description: "d"})
	if err != nil {
		t.Fatal(err)
	}
	o, err := ParseResource(b, "CapabilityStatement")
	if err != nil {
		t.Fatalf("the server's own CapabilityStatement does not validate: %v", err)
	}
	rest := o.Vals[indexOfKey(o, "rest")].([]any)[0].(*Object)
	res, _ := rest.Get("resource")
	if n := len(res.([]any)); n != len(R4().ResourceTypes()) {
		t.Fatalf("%d resource types declared, want %d", n, len(R4().ResourceTypes()))
	}
	t.Logf("CapabilityStatement: %d bytes", len(b))
}

func indexOfKey(o *Object, k string) int {
	for i, kk := range o.Keys {
		if kk == k {
			return i
		}
	}
	return -1
}
