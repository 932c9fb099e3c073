// MARK: - Saturating time arithmetic

extension UInt64 {
    /// This instant (nanoseconds on the broker's clock) plus a duration in milliseconds, saturating at `UInt64.max`
    /// ("never" for every practical purpose) instead of trapping. Durations come from the network (`x-message-ttl`,
    /// `expiration`, `x-expires`) and from the disk (a recovered message's age), so no product of them may trap.
    func saturatingAdd(milliseconds: UInt64) -> UInt64 {
        let (nanos, overflowMultiply) = milliseconds.multipliedReportingOverflow(by: 1_000_000)
        if overflowMultiply { return .max }
        let (sum, overflowAdd) = addingReportingOverflow(nanos)
        return overflowAdd ? .max : sum
    }
}
