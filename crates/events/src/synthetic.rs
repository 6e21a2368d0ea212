//! A seeded, offline generator of Random User API results.
//!
//! Tests and benchmarks need realistic data without the network: the same seed gives
//! the same sequence on every machine (ChaCha8 is specified, unlike `StdRng`). The
//! shapes follow the real sample the original pipeline wrote: national id formats
//! such as `NaNNA249undefined` and `NH 44 86 46 E`, post codes with letters or as
//! JSON numbers, non-ASCII names and addresses, about 1% null ids and a few ids that
//! come again with new values so that de-duplication downstream is exercised.

use rand::{Rng, SeedableRng, seq::IndexedRandom};
use rand_chacha::ChaCha8Rng;

use crate::UserEvent;
use crate::randomuser::{
    Dated, Identity, Location, Login, Name, Picture, RandomUserResult, Scalar, Street,
};

/// Share of events whose `id.value` is null.
const NULL_ID_RATE: f64 = 0.01;
/// Share of events that reuse an id already produced (an update of that user).
const REPEAT_RATE: f64 = 0.02;
/// How many recent ids are remembered for repeats.
const RECENT: usize = 4096;

struct Country {
    nat: &'static str,
    name: &'static str,
    states: &'static [&'static str],
    cities: &'static [&'static str],
    streets: &'static [&'static str],
    male: &'static [&'static str],
    female: &'static [&'static str],
    last: &'static [&'static str],
    id_name: &'static str,
    id: fn(&mut ChaCha8Rng) -> String,
    postcode: fn(&mut ChaCha8Rng) -> Scalar,
    phone: fn(&mut ChaCha8Rng) -> String,
}

fn digits(rng: &mut ChaCha8Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

fn letters(rng: &mut ChaCha8Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'A' + rng.random_range(0..26u8)))
        .collect()
}

fn number(rng: &mut ChaCha8Rng, lo: u32, hi: u32) -> Scalar {
    Scalar::Number(rng.random_range(lo..hi).into())
}

const COUNTRIES: &[Country] = &[
    Country {
        nat: "US",
        name: "United States",
        states: &["Maine", "Minnesota", "Iowa", "Texas", "Oregon", "New York"],
        cities: &[
            "Riverside",
            "Sioux Falls",
            "St. Louis",
            "Austin",
            "Salem",
            "Albany",
        ],
        streets: &[
            "Cherry St",
            "E Pecan St",
            "Railroad St",
            "Lakeview St",
            "Mockingbird Hill",
        ],
        male: &["Daniel", "Angel", "Oscar", "Brandon", "Travis"],
        female: &["Lucy", "Camille", "Lily", "Emma", "Zoey"],
        last: &["Walker", "Fisher", "Johnson", "Graham", "O'Connor"],
        id_name: "SSN",
        id: |r| format!("{}-{}-{}", digits(r, 3), digits(r, 2), digits(r, 4)),
        postcode: |r| number(r, 10000, 99999),
        phone: |r| format!("({}) {}-{}", digits(r, 3), digits(r, 3), digits(r, 4)),
    },
    Country {
        nat: "GB",
        name: "United Kingdom",
        states: &["Cheshire", "Kent", "Devon", "West Yorkshire"],
        cities: &["Bath", "Leeds", "Exeter", "Canterbury"],
        streets: &["New Road", "Church Lane", "High Street", "Mill Road"],
        male: &["Harry", "Callum", "Alfie"],
        female: &["Anna", "Ella", "Chloe"],
        last: &["Cole", "Hughes", "Price", "Reid"],
        id_name: "NINO",
        id: |r| {
            format!(
                "{} {} {} {} {}",
                letters(r, 2),
                digits(r, 2),
                digits(r, 2),
                digits(r, 2),
                letters(r, 1)
            )
        },
        postcode: |r| {
            Scalar::Text(format!(
                "{}{} {}{}",
                letters(r, 2),
                digits(r, 1),
                digits(r, 1),
                letters(r, 2)
            ))
        },
        phone: |r| format!("0{} {}", digits(r, 5), digits(r, 5)),
    },
    Country {
        nat: "FI",
        name: "Finland",
        states: &["Kymenlaakso", "Uusimaa", "Lappi", "Pirkanmaa"],
        cities: &["Pelkosenniemi", "Hämeenlinna", "Äänekoski", "Jyväskylä"],
        streets: &["Verkatehtaankatu", "Hämeenkatu", "Pyynikintie", "Siilitie"],
        male: &["Leevi", "Eetu", "Väinö"],
        female: &["Aino", "Siiri", "Elsa"],
        last: &["Wuori", "Mäkinen", "Heikkilä", "Järvinen"],
        id_name: "HETU",
        id: |r| format!("NaNNA{}undefined", digits(r, 3)),
        postcode: |r| number(r, 10000, 99999),
        phone: |r| format!("0{}-{}-{}", digits(r, 1), digits(r, 3), digits(r, 3)),
    },
    Country {
        nat: "NL",
        name: "Netherlands",
        states: &["Utrecht", "Flevoland", "Groningen", "Zeeland"],
        cities: &["De Steeg", "Kamperzeedijk", "Ommen", "Zierikzee"],
        streets: &["Juliana Bernhardweg", "Eltenseweg", "Kerkstraat"],
        male: &["Jesper", "Daan", "Sem"],
        female: &["Ayah", "Fenna", "Noor"],
        last: &["Van Eijck", "Nieuweboer", "de Jong", "Bakker"],
        id_name: "BSN",
        id: |r| digits(r, 8),
        postcode: |r| Scalar::Text(format!("{} {}", digits(r, 4), letters(r, 2))),
        phone: |r| format!("(0{}) {}", digits(r, 2), digits(r, 7)),
    },
    Country {
        nat: "CA",
        name: "Canada",
        states: &["Nova Scotia", "Québec", "Ontario", "Nunavut"],
        cities: &["Aylmer", "Summerside", "Trois-Rivières", "Iqaluit"],
        streets: &["Bay Ave", "Concession Road 6", "Rue Principale"],
        male: &["Liam", "Noah", "Félix"],
        female: &["Camille", "Chloé", "Maëlle"],
        last: &["Lo", "Gagné", "Tremblay", "Roy"],
        id_name: "SIN",
        id: |r| digits(r, 9),
        postcode: |r| {
            Scalar::Text(format!(
                "{}{}{} {}{}{}",
                letters(r, 1),
                digits(r, 1),
                letters(r, 1),
                digits(r, 1),
                letters(r, 1),
                digits(r, 1)
            ))
        },
        phone: |r| {
            format!(
                "{}{} {}-{}",
                letters(r, 1),
                digits(r, 2),
                digits(r, 3),
                digits(r, 4)
            )
        },
    },
    Country {
        nat: "MX",
        name: "Mexico",
        states: &["Michoacan", "Yucatan", "Oaxaca", "Sonora"],
        cities: &["Villa Vicente Guerrero", "Iturbide", "Mérida", "Hermosillo"],
        streets: &["Ampliación Guatemala", "Pasaje Frías", "Calle Niño Perdido"],
        male: &["Nazario", "Ramón", "Joaquín"],
        female: &["Aurora", "Itzel", "Sofía"],
        last: &["Nazario", "Véliz", "Peña", "Ibáñez"],
        id_name: "NSS",
        id: |r| {
            format!(
                "{} {} {} {} {}",
                digits(r, 2),
                digits(r, 2),
                digits(r, 2),
                digits(r, 4),
                digits(r, 1)
            )
        },
        postcode: |r| number(r, 10000, 99999),
        phone: |r| format!("({}) {} {}", digits(r, 3), digits(r, 3), digits(r, 4)),
    },
    Country {
        nat: "FR",
        name: "France",
        states: &["Yonne", "Gironde", "Bas-Rhin", "Hérault"],
        cities: &["Pau", "Besançon", "Saint-Étienne", "Nîmes"],
        streets: &[
            "Rue Chazière",
            "Place du 8 Février 1962",
            "Rue de l'Abbé-Grégoire",
        ],
        male: &["Oscar", "Noé", "Théo"],
        female: &["Léa", "Anaïs", "Maëlys"],
        last: &["Chevalier", "Lefèvre", "Bonnet", "Rousseau"],
        id_name: "INSEE",
        id: |r| format!("{} {}", digits(r, 13), digits(r, 2)),
        postcode: |r| number(r, 10000, 99999),
        phone: |r| {
            format!(
                "0{}-{}-{}-{}-{}",
                digits(r, 1),
                digits(r, 2),
                digits(r, 2),
                digits(r, 2),
                digits(r, 2)
            )
        },
    },
    Country {
        nat: "DE",
        name: "Germany",
        states: &["Bayern", "Thüringen", "Saarland", "Hessen"],
        cities: &["Würzburg", "Görlitz", "Köln", "Lübeck"],
        streets: &["Schulstraße", "Mühlenweg", "Lindenstraße"],
        male: &["Jürgen", "Lukas", "Björn"],
        female: &["Jördis", "Käthe", "Mia"],
        last: &["Schäfer", "Müller", "Groß", "Köhler"],
        id_name: "SVNR",
        id: |r| format!("{} {}", digits(r, 2), digits(r, 8)),
        postcode: |r| number(r, 10000, 99999),
        phone: |r| format!("0{}-{}", digits(r, 4), digits(r, 7)),
    },
    Country {
        nat: "TR",
        name: "Turkey",
        states: &["Kırşehir", "Çanakkale", "İzmir", "Muğla"],
        cities: &["Kırşehir", "Çanakkale", "İzmir", "Bodrum"],
        streets: &["Atatürk Sk", "Vatan Cd", "Bağdat Cd"],
        male: &["Çağan", "Ömer", "Doğan"],
        female: &["Şebnem", "Gülşen", "Özlem"],
        last: &["Öztürk", "Yıldırım", "Çelik", "Erdoğan"],
        id_name: "",
        id: |_| String::new(),
        postcode: |r| number(r, 10000, 99999),
        phone: |r| format!("({})-{}-{}", digits(r, 3), digits(r, 3), digits(r, 4)),
    },
];

/// A deterministic stream of Random User API results.
pub struct Generator {
    rng: ChaCha8Rng,
    recent: Vec<String>,
    produced: u64,
}

impl Generator {
    /// The same seed yields the same sequence, on every machine.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            recent: Vec::with_capacity(RECENT),
            produced: 0,
        }
    }

    /// The next user, as the API would return it.
    pub fn next_result(&mut self) -> RandomUserResult {
        let rng = &mut self.rng;
        // The slice is a non-empty constant.
        let c = COUNTRIES.choose(rng).unwrap_or(&COUNTRIES[0]);
        let female = rng.random_bool(0.5);
        let first = pick(rng, if female { c.female } else { c.male });
        let last = pick(rng, c.last);
        let mut id = (c.id)(rng);
        if c.id_name.is_empty() || rng.random_bool(NULL_ID_RATE) {
            id.clear();
        } else if !self.recent.is_empty() && rng.random_bool(REPEAT_RATE) {
            id = self.recent[rng.random_range(0..self.recent.len())].clone();
        }
        let username = username(rng);
        let portrait = rng.random_range(0..100);
        let result = RandomUserResult {
            gender: if female { "female" } else { "male" }.to_string(),
            name: Name {
                title: if female { "Ms" } else { "Mr" }.to_string(),
                first: first.to_string(),
                last: last.to_string(),
            },
            location: Location {
                street: Street {
                    number: number(rng, 1, 9999),
                    name: pick(rng, c.streets).to_string(),
                },
                city: pick(rng, c.cities).to_string(),
                state: pick(rng, c.states).to_string(),
                country: c.name.to_string(),
                postcode: (c.postcode)(rng),
            },
            email: format!(
                "{}.{}@example.com",
                ascii_lower(first),
                ascii_lower(last).replace([' ', '\''], "")
            ),
            login: Login { username },
            dob: Dated {
                date: timestamp(rng, 1940, 2005),
            },
            registered: Dated {
                date: timestamp(rng, 2002, 2024),
            },
            phone: (c.phone)(rng),
            id: Some(Identity {
                name: Some(c.id_name.to_string()),
                value: (!id.is_empty()).then_some(id.clone()),
            }),
            picture: Picture {
                medium: format!(
                    "https://randomuser.me/api/portraits/med/{}/{portrait}.jpg",
                    if female { "women" } else { "men" }
                ),
            },
            nat: Some(c.nat.to_string()),
        };
        self.remember(id);
        self.produced += 1;
        result
    }

    /// Keeps an id among the recent ones that later users may repeat.
    fn remember(&mut self, id: String) {
        if id.is_empty() {
            return;
        }
        if self.recent.len() < RECENT {
            self.recent.push(id);
        } else {
            let slot = (self.produced as usize) % RECENT;
            self.recent[slot] = id;
        }
    }

    /// The next user, flattened into the event the producer publishes.
    pub fn next_event(&mut self) -> UserEvent {
        self.next_result().to_event()
    }
}

/// A Random-User-style username: adjective, animal, three digits.
fn username(rng: &mut ChaCha8Rng) -> String {
    const ADJECTIVES: [&str; 8] = [
        "black", "heavy", "brown", "lazy", "yellow", "organic", "tiny", "sad",
    ];
    const ANIMALS: [&str; 8] = [
        "snake",
        "zebra",
        "ostrich",
        "butterfly",
        "cat",
        "ladybug",
        "rabbit",
        "goose",
    ];
    format!(
        "{}{}{}",
        pick(rng, &ADJECTIVES),
        pick(rng, &ANIMALS),
        rng.random_range(100..1000)
    )
}

impl Iterator for Generator {
    type Item = UserEvent;
    fn next(&mut self) -> Option<UserEvent> {
        Some(self.next_event())
    }
}

fn pick<'a>(rng: &mut ChaCha8Rng, options: &[&'a str]) -> &'a str {
    options.choose(rng).copied().unwrap_or_default()
}

/// Lower-case ASCII rendition for e-mail local parts (`Gagné` -> `gagne`).
fn ascii_lower(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'à' | 'á' | 'â' | 'ä' => 'a',
            'ç' | 'Ç' => 'c',
            'é' | 'è' | 'ê' | 'ë' | 'É' => 'e',
            'í' | 'ï' | 'ı' | 'İ' => 'i',
            'ñ' => 'n',
            'ó' | 'ö' | 'Ö' | 'Ó' => 'o',
            'ú' | 'ü' => 'u',
            'ş' | 'Ş' => 's',
            'ğ' => 'g',
            'ß' => 's',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

fn timestamp(rng: &mut ChaCha8Rng, from_year: i32, to_year: i32) -> String {
    format!(
        "{}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        rng.random_range(from_year..to_year),
        rng.random_range(1..13),
        rng.random_range(1..29),
        rng.random_range(0..24),
        rng.random_range(0..60),
        rng.random_range(0..60),
        rng.random_range(0..1000)
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn same_seed_same_events_other_seed_other_events() {
        let a: Vec<_> = Generator::new(7).take(500).collect();
        let b: Vec<_> = Generator::new(7).take(500).collect();
        let c: Vec<_> = Generator::new(8).take(500).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn looks_like_the_real_sample() {
        let events: Vec<_> = Generator::new(42).take(20_000).collect();
        let null_ids = events.iter().filter(|e| e.id.is_none()).count();
        // TR has no id plus 1% random nulls: between 1% and 20%.
        assert!((200..4000).contains(&null_ids), "null ids: {null_ids}");
        let mut seen = HashSet::new();
        let repeats = events
            .iter()
            .filter_map(|e| e.id.as_ref())
            .filter(|id| !seen.insert(id.as_str()))
            .count();
        assert!(repeats > 100, "repeated ids: {repeats}");
        assert!(events.iter().any(|e| !e.last_name.is_ascii()));
        assert!(
            events
                .iter()
                .any(|e| e.post_code.chars().any(|c| c.is_ascii_alphabetic()))
        );
        assert!(
            events
                .iter()
                .any(|e| e.post_code.chars().all(|c| c.is_ascii_digit()))
        );
        assert!(
            events
                .iter()
                .any(|e| e.id.as_deref().is_some_and(|i| i.ends_with("undefined")))
        );
        for e in &events {
            assert!(e.dob.len() == 24 && e.dob.ends_with('Z'), "{}", e.dob);
            assert!(
                e.email.ends_with("@example.com") && e.email.is_ascii(),
                "{}",
                e.email
            );
            assert_eq!(e.address.matches(", ").count(), 3, "{}", e.address);
        }
        let avg = events.iter().map(|e| e.to_json().len()).sum::<usize>() / events.len();
        assert!((250..500).contains(&avg), "average payload {avg} bytes");
    }
}
