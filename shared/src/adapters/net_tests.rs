//! Unit tests of the address rules and the allow list.

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn internal_addresses_of_every_kind_are_recognised() {
    for internal in [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.255",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "ff02::1",
        "::ffff:169.254.169.254",
        "::ffff:127.0.0.1",
        "64:ff9b::a9fe:a9fe",
        "::7f00:1",
    ] {
        assert!(is_internal(ip(internal)), "{internal} is internal");
    }
    for public in [
        "93.184.216.34",
        "8.8.8.8",
        "100.128.0.1",
        "2606:4700::1111",
        "::ffff:8.8.8.8",
    ] {
        assert!(!is_internal(ip(public)), "{public} is public");
    }
}

#[test]
fn allow_list_takes_names_addresses_and_cidrs() {
    let allow = AllowList::parse(" images.internal , 10.0.0.0/8, ::1 ,").unwrap();
    assert!(allow.permits("IMAGES.internal.", ip("10.9.9.9")));
    assert!(allow.permits("other", ip("10.200.0.1")));
    assert!(allow.permits("other", ip("::1")));
    assert!(!allow.permits("other", ip("127.0.0.1")));
    assert!(!allow.permits("other", ip("192.168.0.1")));
    assert!(AllowList::parse("10.0.0.0/33").is_err());
    assert!(AllowList::parse("0.0.0.0/0").unwrap().permits("x", ip("127.0.0.1")));
}

#[test]
fn literal_ip_hosts_and_other_schemes_are_refused_before_any_connection() {
    let none = AllowList::default();
    let url = |s: &str| reqwest::Url::parse(s).unwrap();
    assert_eq!(
        check_url(&url("http://169.254.169.254/latest/meta-data/"), &none),
        Err(Refused)
    );
    assert_eq!(check_url(&url("http://[::ffff:7f00:1]:8080/x"), &none), Err(Refused));
    assert_eq!(check_url(&url("http://2130706433/x"), &none), Err(Refused));
    assert_eq!(check_url(&url("file:///etc/passwd"), &none), Err(Refused));
    assert_eq!(check_url(&url("https://cdn.example.com/a.png"), &none), Ok(()));
    let loopback = AllowList::parse("127.0.0.1").unwrap();
    assert_eq!(check_url(&url("http://127.0.0.1:9/x"), &loopback), Ok(()));
}
