-- wrk script: POST /v1/assignments with a typed place and a varying client address.
-- The director trusts 127.0.0.0/8 as a proxy in the benchmark, so X-Forwarded-For spreads the
-- requests over many client IPs (TEST-NET ranges), as real traffic would be.
local places = { "Paris", "Tokyo", "New York", "Sydney", "São Paulo", "Berlin", "Mumbai", "Lagos" }
local nets = { "192.0.2.", "198.51.100.", "203.0.113." }
local n = 0
request = function()
  n = n + 1
  local body = string.format('{"location":"%s","protocol":"native","bitrate_kbps":4000}',
    places[(n % #places) + 1])
  local headers = {
    ["Content-Type"] = "application/json",
    ["X-Forwarded-For"] = nets[(n % #nets) + 1] .. tostring(n % 250 + 1),
  }
  return wrk.format("POST", "/v1/assignments", headers, body)
end
