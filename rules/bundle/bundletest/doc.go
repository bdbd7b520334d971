// Package bundletest holds the checks the rule and dashboard tests share.
package bundletest
