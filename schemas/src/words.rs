//! The contract's words (image statuses, failure reason codes, dead-letter error classes):
//! enums whose every variant has a stable text, declared once with `words!`.

/// How many words a `words!` enum has (the length of its `ALL`).
#[doc(hidden)]
pub const fn count(texts: &[&str]) -> usize {
    texts.len()
}

/// Declares an enum of words, each variant with its stable text, and gives it `ALL` (every
/// word, in declaration order), `as_str`, `Display` and `FromStr` (a text no variant has is
/// [`crate::SchemaError::UnknownWord`] of `kind`).
macro_rules! words {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($kind:literal) {
            $( $(#[$variant_meta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl $name {
            /// Every word, in declaration order.
            pub const ALL: [$name; $crate::words::count(&[$($text),+])] = [$($name::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::SchemaError;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .into_iter()
                    .find(|word| word.as_str() == text)
                    .ok_or_else(|| $crate::SchemaError::UnknownWord {
                        kind: $kind,
                        word: text.to_string(),
                    })
            }
        }
    };
}
