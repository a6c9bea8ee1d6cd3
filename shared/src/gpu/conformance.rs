pub trait TestEngine {}
